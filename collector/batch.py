"""What a read of the spool directory gives: the files' states, their new records, a batch.

`collector.tail` follows the files and fills a `Batch` with one `FileChunk` per file, its lines
parsed (`collector.records`); the store places and commits it, and `SpoolDir.commit` moves each
`FileState` past it. Data only: nothing here reads a file or touches the database.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from tasklog.core.constants import DEFAULT_MAX_LINE_BYTES


@dataclass
class FileState:
    """What the collector knows of one spool file. `offset` is the stored (committed) end."""

    name: str
    inode: int
    offset: int = 0
    task_id: str | None = None
    seq_base: int = 0
    #: Where the run's seqs continue elsewhere: (first n, base) after the first segment.
    segments: tuple[tuple[int, int], ...] = ()
    max_seq: int = 0
    head: int = 500
    tail: int = 500
    ended: bool = False
    pid: int | None = None
    #: The file's owner: only a process of this user can be its writer (`Collector._orphans`).
    uid: int | None = None
    #: When the run started (its start record's time, held by `collector.clock`); None when
    #: the start was stored by an earlier process.
    started: float | None = None
    #: The writer's worker main process, when the writer is a pool child (start record `ppid`).
    parent_pid: int | None = None
    size: int = 0
    changed_at: float = field(default_factory=time.monotonic)
    #: The batch this file was last read into (0: never), and when the collector first saw it:
    #: what orders the files of a batch (`SpoolDir.read_batch`), never anything in the name.
    served: int = 0
    seen_at: float = field(default_factory=time.monotonic)

    @property
    def registered(self) -> bool:
        return self.task_id is not None


def shown(name: str) -> str:
    """A file name for a log line: a name is chosen by whoever wrote the spool directory, so
    one holding control characters or undecodable bytes is shown escaped."""
    return name if name.isprintable() and name.isascii() else ascii(name)


class Line(NamedTuple):
    """A line record's values, checked and storable. A tuple: the reader makes a million of
    them a second, and `tuple.__new__` costs a fraction of a class's `__init__`."""

    seq: int  # the run's own sequence number n; `Run.seq` places it among the task's
    t: float
    stream: str
    level: str | None
    message: str


@dataclass
class FileChunk:
    """The new records of one file in a batch."""

    state: FileState
    end_offset: int
    start: dict[str, Any] | None = None
    lines: list[Line] = field(default_factory=list)
    progress: dict[str, Any] | None = None
    end: dict[str, Any] | None = None
    corrupt: int = 0
    #: Why this file cannot speak for the task it claims (a start record naming another task
    #: than the file's name): the file is quarantined, nothing of it stored.
    forged: str | None = None
    #: Highest per-run seq read so far: a line must go beyond it (see `records.parse_record`).
    last_seq: int = 0
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES


@dataclass
class Batch:
    """The new records of many files, read together and committed in one transaction."""

    chunks: list[FileChunk] = field(default_factory=list)
    lines: int = 0
    bytes: int = 0
    corrupt: int = 0

    def __bool__(self) -> bool:
        return bool(self.chunks)

    @classmethod
    def of(cls, chunks: list[FileChunk]) -> Batch:
        """A batch of some chunks of another (to commit a part of it)."""
        return cls(
            chunks=chunks,
            lines=sum(len(chunk.lines) for chunk in chunks),
            bytes=sum(chunk.end_offset - chunk.state.offset for chunk in chunks),
            corrupt=sum(chunk.corrupt for chunk in chunks),
        )
