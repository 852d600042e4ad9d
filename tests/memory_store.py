"""An in-memory `collector.ports.Store`: the Postgres store's promise without Postgres.

A commit is all or nothing, as a transaction is: the lines, the files' offsets rows and the
tasks change together once the commit went through (after the commit before it, `after`), or
not at all. Seqs are given as `Store._place` gives them (`Run.allocate` under the task's
"lock": one commit applies at a time). Faults are injected where a real store meets them:

- `unavailable`: the numbers of the commits (1, 2, ...) that fail as if the connection dropped
  (`StoreUnavailable`), after yielding to the loop, so that the next batch is in flight;
- `reply_lost`: the numbers of the commits that go through but whose answer is lost (the
  connection drops after COMMIT): the pipeline sees a failure for a batch that is stored;
- `POISON` in a line: the store refuses that line (`RecordRefused`), in trial commits too;
- `on_commit`: called with each commit's number as it starts (a test stops the pipeline there).

It counts what a real store could not show so plainly: a seq written twice (`duplicates`).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from collector.batch import Batch, FileState
from collector.copydata import Rows
from collector.plan import Run, plan, window
from collector.ports import After
from collector.store import RecordRefused
from collector.stored import Stored
from tasklog.core.constants import FAILURE, LOST, STARTED
from tasklog.core.errors import StoreUnavailable

#: A line holding this is refused by the store.
POISON = "POISON"


class _Unavailable(StoreUnavailable):
    """The in-memory store dropped the connection (an injected fault)."""


class MemoryStore:
    def __init__(
        self,
        unavailable: Iterable[int] = (),
        reply_lost: Iterable[int] = (),
        on_commit: Callable[[int], None] | None = None,
    ) -> None:
        self.unavailable = set(unavailable)
        self.reply_lost = set(reply_lost)
        self.on_commit = on_commit
        #: Commits started, trials included.
        self.commits = 0
        #: file name -> its offsets row, as `load_files` gives it back.
        self.files: dict[str, FileState] = {}
        #: task id -> seq -> message
        self.lines: dict[str, dict[int, str]] = {}
        #: task id -> its row (state, last_seq)
        self.tasks: dict[str, dict[str, Any]] = {}
        #: Seqs that a commit wrote a second time.
        self.duplicates = 0
        self.closed = 0
        #: Connections dropped (the pipeline reloads the offsets after one).
        self.losses = 0
        #: What the store held after each commit, for `fail_over`.
        self.history: list[Any] = []

    # -- the protocol ---------------------------------------------------------------------

    async def commit(
        self,
        batch: Batch,
        forget: Iterable[str] = (),
        *,
        trial: bool = False,
        after: After | None = None,
        placed: asyncio.Event | None = None,
    ) -> Stored:
        try:
            return await self._commit(batch, forget, trial=trial, after=after, placed=placed)
        finally:
            if placed is not None:
                placed.set()

    async def _commit(
        self,
        batch: Batch,
        forget: Iterable[str],
        *,
        trial: bool,
        after: After | None,
        placed: asyncio.Event | None,
    ) -> Stored:
        if after is not None:
            await after.placed.wait()  # the batch before has its tasks' rows "locked"
        self.commits += 1
        number = self.commits
        if self.on_commit is not None:
            self.on_commit(number)
        # Let the pipeline start the next batch while this one "runs".
        for _ in range(3):
            await asyncio.sleep(0)
        if any(POISON in line.message for chunk in batch.chunks for line in chunk.lines):
            raise RecordRefused(ValueError("poisoned line"))
        if number in self.unavailable:
            self.losses += 1
            raise _Unavailable("the in-memory store dropped the connection")
        if placed is not None:
            placed.set()
        if after is not None:
            await after.committed  # the batch before commits first; its failure is this one's
        stored = self._plan(batch)
        if trial:
            return stored
        self._apply(list(forget), stored)
        self.history.append(copy.deepcopy((self.files, self.lines, self.tasks)))
        if number in self.reply_lost:
            self.losses += 1
            raise _Unavailable("the in-memory store dropped the connection after COMMIT")
        return stored

    async def load_files(self) -> dict[str, FileState]:
        return {name: dataclasses.replace(row, size=row.offset) for name, row in self.files.items()}

    async def lose(self, state: FileState, reason: str) -> dict[str, Any] | None:
        if state.task_id is None:
            return None
        task = self.tasks.setdefault(state.task_id, {"task_id": state.task_id, "last_seq": 0})
        if task.get("state") in (None, STARTED):
            task["state"] = LOST
        self.files[state.name] = dataclasses.replace(state, ended=True)
        return dict(task)

    async def replication_position(self) -> tuple[int | None, int | None]:
        """No standby here: kept files wait for their grace period."""
        return None, None

    async def close(self) -> None:
        self.closed += 1

    def fail_over(self, commits: int) -> None:
        """A standby that had only the first `commits` commits is promoted: the rest are gone,
        and the connection with them."""
        empty: Any = ({}, {}, {})
        held = self.history[commits - 1] if commits else empty
        self.files, self.lines, self.tasks = copy.deepcopy(held)
        del self.history[commits:]
        self.losses += 1

    # -- what a test reads ----------------------------------------------------------------

    def messages(self, task_id: str) -> list[str]:
        """A task's stored lines in seq order."""
        stored = self.lines.get(task_id, {})
        return [stored[seq] for seq in sorted(stored)]

    # -- inside ---------------------------------------------------------------------------

    def _plan(self, batch: Batch) -> Stored:
        """The batch's runs, seqs and rows, computed on copies: nothing changes yet."""
        last_seq = {task_id: task["last_seq"] for task_id, task in self.tasks.items()}
        stored = Stored()
        for chunk in batch.chunks:
            state = chunk.state
            if state.task_id is not None:
                run = Run(
                    chunk,
                    state.task_id,
                    state.seq_base,
                    state.head,
                    state.tail,
                    state.max_seq,
                    state.segments,
                )
            elif chunk.start is not None:
                head, tail = window(chunk.start.get("max_lines"))
                task_id = chunk.start["task_id"]
                run = Run(chunk, task_id, last_seq.get(task_id, 0), head, tail, 0)
            else:
                continue
            after = max(run.max_seq, chunk.lines[-1].seq) if chunk.lines else run.max_seq
            last_seq[run.task_id] = run.allocate(last_seq.get(run.task_id, 0), after)
            stored.runs.append(run)
        pieces, *_ = plan(stored.runs)
        for piece in pieces:
            stored.lines.setdefault(piece.task_id, []).append(piece)
            stored.rows += len(piece.lines)
        stored.tasks = [{"task_id": task_id, "last_seq": seq} for task_id, seq in last_seq.items()]
        return stored

    def _apply(self, forget: list[str], stored: Stored) -> None:
        for task_id, pieces in stored.lines.items():
            lines = self.lines.setdefault(task_id, {})
            for piece in pieces:
                for seq, message in _seqs(piece):
                    if seq in lines:
                        self.duplicates += 1
                    lines[seq] = message
        for run in stored.runs:
            chunk = run.chunk
            task = self.tasks.setdefault(run.task_id, {"task_id": run.task_id, "last_seq": 0})
            task["last_seq"] = max(task["last_seq"], run.seq(run.max_seq))
            if chunk.start is not None:
                task["state"] = STARTED
            if chunk.end is not None:
                task["state"] = chunk.end.get("state", FAILURE)
            self.files[chunk.state.name] = dataclasses.replace(
                chunk.state,
                offset=chunk.end_offset,
                task_id=run.task_id,
                seq_base=run.seq_base,
                segments=run.segments,
                max_seq=run.max_seq,
                head=run.head,
                tail=run.tail,
                ended=chunk.end is not None,
            )
        for name in forget:
            self.files.pop(name, None)


def _seqs(piece: Rows) -> list[tuple[int, str]]:
    return [(piece.base + line.seq, line.message) for line in piece.lines]


class SecondConnection:
    """The same in-memory store through a second "connection" (the collector's spare)."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.closed = 0

    async def commit(
        self,
        batch: Batch,
        forget: Iterable[str] = (),
        *,
        trial: bool = False,
        after: After | None = None,
        placed: asyncio.Event | None = None,
    ) -> Stored:
        return await self.store.commit(batch, forget, trial=trial, after=after, placed=placed)

    async def load_files(self) -> dict[str, FileState]:
        return await self.store.load_files()

    async def lose(self, state: FileState, reason: str) -> dict[str, Any] | None:
        return await self.store.lose(state, reason)

    async def replication_position(self) -> tuple[int | None, int | None]:
        return await self.store.replication_position()

    @property
    def losses(self) -> int:
        return self.store.losses

    async def close(self) -> None:
        self.closed += 1


class MemoryPublisher:
    """Keeps what it was told (the live path never fails the pipeline)."""

    def __init__(self) -> None:
        self.tasks: list[dict[str, Any]] = []
        self.lines = 0

    async def publish(self, lines: dict[str, list[Rows]], tasks: list[dict[str, Any]]) -> None:
        self.lines += sum(len(piece.lines) for pieces in lines.values() for piece in pieces)
        self.tasks += tasks
