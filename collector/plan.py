"""Planning a batch's rows: each run's lines placed at their seqs, bounded to head+tail.

Pure: from the runs of a batch (a file's new records and where its task's seqs continue), the
rows to COPY and the parameters of the statements that go with them. Nothing here touches the
database or the files' bookkeeping; `Store.commit` runs the plan in one transaction and
`SpoolDir.commit` applies its result once that committed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from psycopg.types.json import Jsonb

from collector import fields
from collector.copytext import Row, iso
from collector.tail import FileChunk, FileState

#: A kept run's head+tail bound when its start record gives none (the shim's default).
DEFAULT_MAX_LINES = 1000
#: Published line: what the live path sends for a stored line.
Published = dict[str, Any]


@dataclass
class Run:
    """A chunk's placement in its task: where its seqs start and its head+tail window.

    Pending until the batch commits; then `SpoolDir.commit` copies it to the file's state.
    """

    chunk: FileChunk
    task_id: str
    seq_base: int
    head: int
    tail: int
    max_seq: int


@dataclass
class Stored:
    """What a committed batch stored: for the live path and for the files' bookkeeping."""

    lines: dict[str, list[Published]] = field(default_factory=dict)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    rows: int = 0


class Plan(NamedTuple):
    """The rows to COPY and the parameters of the statements that go with them."""

    rows: list[Row]
    trims: list[dict[str, Any]]
    advances: list[dict[str, Any]]
    ends: list[dict[str, Any]]
    markers: list[dict[str, Any]]


def window(max_lines: object) -> tuple[int, int]:
    """(head, tail) of a run from its start record's `max_lines`."""
    if type(max_lines) is not int or max_lines < 2:
        max_lines = DEFAULT_MAX_LINES
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


def plan(runs: list[Run], stored: Stored) -> Plan:
    """The rows to COPY and the statements that go with them, applying the head+tail bound.

    A run keeps its first `head` lines and its last `tail` lines: lines of this batch that are
    already out of the tail window are never inserted, stored ones that leave it are deleted,
    and the end of the run adds one "N lines omitted" marker where the gap is.
    """
    rows: list[Row] = []
    trims: list[dict[str, Any]] = []
    advances: list[dict[str, Any]] = []
    ends: list[dict[str, Any]] = []
    markers: list[dict[str, Any]] = []
    for run in runs:
        chunk, base, head, tail = run.chunk, run.seq_base, run.head, run.tail
        before = run.max_seq
        after = max([before, *(line.seq for line in chunk.lines)])
        cutoff = after - tail  # local seqs above head and at or below this are omitted
        published = stored.lines.setdefault(run.task_id, [])
        added = 0
        for line in chunk.lines:
            if line.seq <= head or line.seq > cutoff:
                seq = base + line.seq
                ts = iso(line.t)
                rows.append((run.task_id, seq, ts, line.stream, line.level, line.message))
                published.append(
                    {
                        "seq": seq,
                        "ts": ts,
                        "stream": line.stream,
                        "level": line.level,
                        "message": line.message,
                    }
                )
                added += 1
        low, high = max(head, before - tail), min(before, cutoff)
        if high > low:
            trims.append({"task_id": run.task_id, "low": base + low, "high": base + high})
            added -= high - low
        progress = chunk.progress or {}
        omitted = max(0, after - head - tail)
        if chunk.end is not None and omitted:
            markers.append(marker(run.task_id, base, head, omitted, chunk.end.get("t")))
            added += 1
        advances.append(
            {
                "task_id": run.task_id,
                "added": added,
                "last_seq": base + after,
                "progress": fields.percent(progress.get("p")),
                "progress_message": fields.text(progress.get("msg")),
                "state": (fields.text(progress.get("state")) or "")[:32] or None,
            }
        )
        if chunk.end is not None:
            end = chunk.end
            ends.append(
                {
                    "task_id": run.task_id,
                    "state": str(end["state"])[:32],
                    "t": fields.moment(end.get("t")),
                    "runtime": fields.number(end.get("runtime")),
                    "exc_type": fields.text(end.get("exc_type")),
                    "exc_message": fields.text(end.get("exc_message")),
                    "traceback": fields.text(end.get("traceback")),
                    "errors": end["errors"] if type(end.get("errors")) is int else 0,
                    "omitted": omitted,
                }
            )
        run.max_seq = after
        if not published:
            del stored.lines[run.task_id]
    return Plan(rows, trims, advances, ends, markers)


def marker(task_id: str, base: int, head: int, omitted: int, t: object) -> dict[str, Any]:
    """The "N lines omitted" line, at the first seq after the head."""
    return {
        "task_id": task_id,
        "seq": base + head + 1,
        "t": fields.moment(t),
        "message": f"… {omitted} lines omitted "
        "(TASKLOG_MAX_LINES keeps the first and last lines) …",
    }


def state_marker(state: FileState, omitted: int) -> dict[str, Any]:
    """The marker of a run finalized without its end record (its writer died)."""
    assert state.task_id is not None
    return marker(state.task_id, state.seq_base, state.head, omitted, None)


def start_params(start: dict[str, Any]) -> dict[str, Any]:
    """The `start_task` parameters of a start record."""
    args = None
    if "args" in start or "kwargs" in start:
        args = Jsonb({"args": start.get("args"), "kwargs": start.get("kwargs")})
    pid = start.get("pid")
    retries = start.get("retries")
    return {
        "task_id": start["task_id"],
        "name": fields.text(start.get("name")),
        "host": fields.text(start.get("host")),
        "worker": fields.text(start.get("worker")),
        "pid": pid if type(pid) is int and 0 < pid < 2**31 else None,
        "parent_id": fields.text(start.get("parent_id")),
        "root_id": fields.text(start.get("root_id")),
        "retries": retries if type(retries) is int and 0 <= retries < 2**31 else 0,
        "args": args,
        "t": fields.moment(start.get("t")),
    }
