"""The cadence of batches: when the next one is read, and what waits to ride with one.

A batch costs about as much for one small file as for ten (a transaction, its round trips, a
publish). Two things follow, both about time rather than about what is stored:

- `Gathering`: while files keep changing, the next batch is read no sooner than
  TASKLOG_DEBOUNCE_MS after the last one, or `GATHER_RUNS` after a batch that held only runs
  starting or ending, several of them starting or several ending (a stream of small tasks:
  each batch then gathers the files of many). A lone line after a quiet spell does not wait,
  nor the first lines of a task whose start was read alone, and those of a task that began
  as the one before it ended (a worker's tasks one after the other, followed live) wait
  TASKLOG_DEBOUNCE_MS only.
- `Forgotten`: the offsets rows of spool files that are gone (deleted once stored, vanished,
  finalized) ride with the next batch's commit, or go on their own after `FORGET_DELAY`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Protocol

#: The least seconds between two batches' reads while each batch holds only runs starting or
#: ending (each file's chunk has its start or its end record), several starting or several
#: ending (many small tasks): a batch costs about as much for one such file as for ten. A
#: batch with a running task's lines alone in a chunk (output followed live), or one task's
#: end and the next one's start (a worker's tasks one after the other) keeps
#: TASKLOG_DEBOUNCE_MS; after one task's start alone the next read does not wait.
GATHER_RUNS = 0.05
#: Seconds the offsets rows of deleted files may wait for a batch to ride with. Committed on
#: their own at once, they doubled the transactions of a stream of small tasks (one batch
#: for a task's file, one more to forget it); a row left behind a little longer is harmless
#: (a restart finds its file gone and forgets it).
FORGET_DELAY = 1.0


class Chunk(Protocol):
    """What the gathering asks of a file's part of a batch (`collector.batch.FileChunk`)."""

    @property
    def start(self) -> Any: ...
    @property
    def end(self) -> Any: ...
    @property
    def lines(self) -> Sequence[Any]: ...


class Gathering:
    """The least time between the reads of two batches while files keep changing."""

    def __init__(self, debounce: float) -> None:
        #: TASKLOG_DEBOUNCE_MS, in seconds.
        self.debounce = debounce
        #: When the last batch that held something was read, and the wait before the next.
        self._read_at = -GATHER_RUNS
        self._next = debounce

    @property
    def next_read(self) -> float:
        """The earliest time (`time.monotonic`) for the next read while files keep changing."""
        return self._read_at + self._next

    async def wait(self, final: bool) -> None:
        """Let the wait since the last batch was read pass (not while stopping: `final`)."""
        wait = self.next_read - time.monotonic()
        if wait > 0 and not final:
            await asyncio.sleep(wait)

    def read(self, began: float, chunks: Sequence[Chunk]) -> None:
        """A batch of these `chunks` (one a file) was read from `began`."""
        if not chunks:
            return
        self._read_at = began
        starts = sum(chunk.start is not None for chunk in chunks)
        if len(chunks) == 1 and starts == 1 and not chunks[0].lines and chunks[0].end is None:
            # A task's start alone, read as it began: its first lines, most likely printed
            # by now, are read as they come (the pace of a steady stream is set after them).
            self._next = 0.0
            return
        ends = sum(chunk.end is not None for chunk in chunks)
        runs_only = all(chunk.start is not None or chunk.end is not None for chunk in chunks)
        many = runs_only and max(starts, ends) > 1
        self._next = max(self.debounce, GATHER_RUNS) if many else self.debounce


class Forgotten:
    """Spool files whose offsets rows go with the next commit, and since when the oldest
    of them waits (`FORGET_DELAY`)."""

    def __init__(self) -> None:
        self._names: list[str] = []
        self._since: float | None = None

    def __bool__(self) -> bool:
        return bool(self._names)

    def add(self, name: str) -> None:
        self._names.append(name)

    def take(self) -> list[str]:
        """The names, for the commit about to begin; none are left waiting."""
        names, self._names = self._names, []
        self._since = None
        return names

    def give_back(self, names: list[str]) -> None:
        """Names taken for a commit that failed: they go with the next one, first."""
        self._names[:0] = names

    def clear(self) -> None:
        self._names.clear()

    def due(self, final: bool) -> bool:
        """Whether the rows are committed without a batch: they waited `FORGET_DELAY`, or
        the collector is stopping (`final`)."""
        if not self._names:
            return False
        now = time.monotonic()
        if self._since is None:
            self._since = now
        return final or now - self._since >= FORGET_DELAY
