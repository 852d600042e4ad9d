"""Planning a batch's rows: each run's lines placed at their seqs, bounded to head+tail.

From the runs of a batch (a file's new records and where its task's seqs continue), the
lines to COPY (`Rows`: a task's lines and where their seqs start) and the parameters of the
statements that go with them. Nothing here touches the database or the files' bookkeeping;
`Store.commit` runs the plan in one transaction and `SpoolDir.commit` applies its result once
that committed. The one change `plan` makes is to the runs it is given, the batch's pending
placements: each run's `max_seq` moves to its last line's (and `Run.allocate`, called by
`Store._place`, moves its seqs).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from psycopg.types.json import Jsonb

from collector import fields
from collector.batch import FileChunk, FileState, Line
from collector.copydata import Rows
from tasklog.core.constants import DEFAULT_MAX_LINES

#: The largest head+tail bound a start record may ask for.
MAX_LINES = (1 << 31) - 1


@dataclass
class Run:
    """A chunk's placement in its task: where its seqs are and its head+tail window.

    The run's line n is the task's seq `seq_base + n`, unless the run goes on in a later
    segment: (first n, base) in `segments`, given when another run of the task took seqs
    meanwhile (`Store._place`). Pending until the batch commits; then `SpoolDir.commit` copies
    it to the file's state.
    """

    chunk: FileChunk
    task_id: str
    seq_base: int
    head: int
    tail: int
    max_seq: int
    segments: tuple[tuple[int, int], ...] = ()

    def seq(self, n: int) -> int:
        """The task's seq of the run's line n."""
        base = self.seq_base
        for first, later in self.segments:
            if n < first:
                break
            base = later
        return base + n

    def seq_ranges(self, low: int, high: int) -> Iterator[tuple[int, int]]:
        """The task's seqs of the run's lines low < n <= high, as (low, high] ranges."""
        bounds = [(1, self.seq_base), *self.segments]
        for i, (first, base) in enumerate(bounds):
            end = bounds[i + 1][0] - 1 if i + 1 < len(bounds) else high
            a, b = max(low, first - 1), min(high, end)
            if b > a:
                yield base + a, base + b

    def rows(self, lines: list[Line]) -> Iterator[Rows]:
        """This run's `lines` (in order) as `Rows`: one per segment of seqs they fall in."""
        bounds = [(1, self.seq_base), *self.segments]
        low = 0
        for i, (_, base) in enumerate(bounds):
            high = len(lines)
            if i + 1 < len(bounds):
                high = bisect_left(lines, bounds[i + 1][0], lo=low, key=_number)
            if high > low:
                yield Rows(
                    self.task_id, base, lines if high - low == len(lines) else lines[low:high]
                )
            low = high

    def allocate(self, last_seq: int, after: int) -> int:
        """Take the seqs of lines max_seq < n <= after, the task's seqs being allocated up to
        `last_seq`; returns the new last allocated seq (the caller holds the task's row lock).

        While nothing was allocated after this run's own last seq, the run goes on where it
        is; otherwise it continues after `last_seq` in a new segment: no seq is ever given
        twice, whatever other runs of the task (another host's) do meanwhile.
        """
        if after <= self.max_seq:
            return last_seq
        if self.seq(self.max_seq) >= last_seq:
            return max(last_seq, self.seq(after))
        base = last_seq - self.max_seq
        first = self.max_seq + 1
        if first == 1:
            self.seq_base, self.segments = base, ()
        elif self.segments and self.segments[-1][0] == first:
            self.segments = (*self.segments[:-1], (first, base))
        else:
            self.segments = (*self.segments, (first, base))
        return base + after


class Plan(NamedTuple):
    """The lines to COPY and the parameters of the statements that go with them."""

    rows: list[Rows]
    trims: list[dict[str, Any]]
    advances: list[dict[str, Any]]
    ends: list[dict[str, Any]]
    markers: list[dict[str, Any]]


def window(max_lines: object) -> tuple[int, int]:
    """(head, tail) of a run from its start record's `max_lines`."""
    if type(max_lines) is not int or max_lines < 2:
        max_lines = DEFAULT_MAX_LINES
    max_lines = min(max_lines, MAX_LINES)  # head and tail are int4 columns
    head = max_lines // 2
    return head, max_lines - head


def slices(runs: list[Run], lines: int) -> Iterator[list[Run]]:
    """Consecutive runs holding about `lines` lines each (a run is never split)."""
    group: list[Run] = []
    count = 0
    for run in runs:
        group.append(run)
        count += len(run.chunk.lines)
        if count >= lines:
            yield group
            group, count = [], 0
    if group:
        yield group


def plan(runs: list[Run]) -> Plan:
    """The rows to COPY and the statements that go with them, applying the head+tail bound.

    A run keeps its first `head` lines and its last `tail` lines: lines of this batch that are
    already out of the tail window are never inserted, stored ones that leave it are deleted,
    and the end of the run adds one "N lines omitted" marker where the gap is.
    """
    rows: list[Rows] = []
    trims: list[dict[str, Any]] = []
    advances: list[dict[str, Any]] = []
    ends: list[dict[str, Any]] = []
    markers: list[dict[str, Any]] = []
    for run in runs:
        chunk, head, tail = run.chunk, run.head, run.tail
        lines = chunk.lines
        before = run.max_seq
        # A chunk's seqs only go up (the reader refuses any other): its last is its highest.
        after = max(before, lines[-1].seq) if lines else before
        cutoff = after - tail  # local seqs above head and at or below this are omitted
        if lines and head < cutoff and not (lines[0].seq > cutoff or lines[-1].seq <= head):
            lines = [line for line in lines if line.seq <= head or line.seq > cutoff]
        if lines:
            rows += run.rows(lines)
        added = len(lines)
        low, high = max(head, before - tail), min(before, cutoff)
        if high > low:
            for a, b in run.seq_ranges(low, high):
                trims.append({"task_id": run.task_id, "low": a, "high": b})
            added -= high - low
        progress = chunk.progress or {}
        omitted = max(0, after - head - tail)
        if chunk.end is not None and omitted:
            markers.append(marker(run.task_id, run.seq(head + 1), omitted, chunk.end.get("t")))
            added += 1
        advances.append(
            {
                "task_id": run.task_id,
                "added": added,
                "last_seq": run.seq(after),
                "progress": fields.percent(progress.get("p")),
                "progress_message": fields.short_text(progress.get("msg"), fields.TEXT_BYTES),
                "state": _state(progress.get("state")),
            }
        )
        if chunk.end is not None:
            end = chunk.end
            ends.append(
                {
                    "task_id": run.task_id,
                    "state": _state(end["state"]) or "",
                    "t": fields.record_time(end.get("t")),
                    "runtime": fields.number(end.get("runtime")),
                    "exc_type": fields.short_text(end.get("exc_type"), fields.KEY_BYTES),
                    "exc_message": fields.short_text(end.get("exc_message"), fields.TEXT_BYTES),
                    "traceback": fields.short_text(end.get("traceback"), fields.TEXT_BYTES),
                    "errors": fields.count(end.get("errors")),
                    "omitted": omitted,
                    "first_seq": run.seq(1),
                }
            )
        run.max_seq = after
    return Plan(rows, trims, advances, ends, markers)


def marker(task_id: str, seq: int, omitted: int, t: object) -> dict[str, Any]:
    """The "N lines omitted" line, at the seq of the run's first line after the head."""
    return {
        "task_id": task_id,
        "seq": seq,
        "t": fields.record_time(t),
        "message": f"… {omitted} lines omitted "
        "(TASKLOG_MAX_LINES keeps the first and last lines) …",
    }


def state_marker(state: FileState, omitted: int) -> dict[str, Any]:
    """The marker of a run finalized without its end record (its writer died)."""
    assert state.task_id is not None
    run = Run(
        FileChunk(state, state.offset),
        state.task_id,
        state.seq_base,
        state.head,
        state.tail,
        state.max_seq,
        state.segments,
    )
    return marker(state.task_id, run.seq(state.head + 1), omitted, None)


def start_params(start: dict[str, Any]) -> dict[str, Any]:
    """The `start_task` parameters of a start record."""
    args = None
    if "args" in start or "kwargs" in start:
        args = Jsonb(fields.json_value({"args": start.get("args"), "kwargs": start.get("kwargs")}))
    pid = start.get("pid")
    key = fields.KEY_BYTES
    return {
        "task_id": start["task_id"],
        "name": fields.short_text(start.get("name"), key),
        "host": fields.short_text(start.get("host"), key),
        "worker": fields.short_text(start.get("worker"), key),
        "pid": pid if type(pid) is int and 0 < pid < 2**31 else None,
        "parent_id": fields.short_text(start.get("parent_id"), key),
        "root_id": fields.short_text(start.get("root_id"), key),
        "retries": fields.count(start.get("retries")),
        "args": args,
        "t": fields.record_time(start.get("t")),
    }


def _state(value: object) -> str | None:
    """A state name from a record: storable, at most `fields.STATE_CHARS` characters."""
    text = fields.text(value)
    return text[: fields.STATE_CHARS] or None if text is not None else None


def _number(line: Line) -> int:
    return line.seq
