"""Following the spool directory: which files exist, how far each is stored, what is new.

`SpoolDir.read_batch` turns the unstored bytes of many files into one `Batch` of parsed
records, never past a file's last newline (a trailing partial record is left for later), and
stops at the batch bounds. Nothing here touches the database: offsets advance only when
`commit` is called after the store has committed the batch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from capture_shim import spool
from collector.fields import clean_text

if TYPE_CHECKING:
    from collector.plan import Stored

log = logging.getLogger("tasklog.collector")

#: A record longer than this without a newline is corrupt; it is skipped, not waited for.
MAX_RECORD_BYTES = 8 << 20
_STREAMS = frozenset({spool.STDOUT, spool.STDERR, spool.LOG})
_NUMBER = (int, float)


@dataclass
class FileState:
    """What the collector knows of one spool file. `offset` is the stored (committed) end."""

    name: str
    inode: int
    offset: int = 0
    task_id: str | None = None
    seq_base: int = 0
    max_seq: int = 0
    head: int = 500
    tail: int = 500
    ended: bool = False
    pid: int | None = None
    size: int = 0
    changed_at: float = field(default_factory=time.monotonic)

    @property
    def registered(self) -> bool:
        return self.task_id is not None


@dataclass(slots=True)
class Line:
    seq: int  # the run's own sequence number; the store adds the file's seq_base
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


@dataclass
class Batch:
    chunks: list[FileChunk] = field(default_factory=list)
    lines: int = 0
    bytes: int = 0
    corrupt: int = 0

    def __bool__(self) -> bool:
        return bool(self.chunks)


class SpoolDir:
    def __init__(self, path: Path, known: dict[str, FileState]) -> None:
        self.path = path
        self.files = known
        self._dirty: set[str] = set(known)
        # A batch may be read in a thread while the loop notes changes: a file must not be
        # unmarked by the reader just after the loop marked it for growing.
        self._marks = threading.Lock()
        self.skipped_bytes = 0
        #: Files found shorter than what was stored of them (truncated under the collector).
        self.truncated = 0

    # -- discovering ------------------------------------------------------------------------

    def scan(self) -> list[str]:
        """Stat every spool file; returns the names of known files that vanished."""
        seen: set[str] = set()
        with os.scandir(self.path) as entries:
            for entry in entries:
                if entry.name.endswith(spool.SUFFIX) and entry.is_file(follow_symlinks=False):
                    seen.add(entry.name)
                    self._observe(entry.name, entry.stat(follow_symlinks=False))
        gone = [name for name in self.files if name not in seen]
        return gone

    def touched(self, names: set[str]) -> None:
        """Files that watchfiles says changed."""
        for name in names:
            if not name.endswith(spool.SUFFIX):
                continue
            try:
                st = os.stat(self.path / name, follow_symlinks=False)
            except FileNotFoundError:
                continue
            self._observe(name, st)

    def _observe(self, name: str, st: os.stat_result) -> None:
        with self._marks:
            self._observe_locked(name, st)

    def _observe_locked(self, name: str, st: os.stat_result) -> None:
        state = self.files.get(name)
        if state is None:
            state = self.files[name] = FileState(name=name, inode=st.st_ino)
        elif state.inode != st.st_ino:
            log.warning("spool file %s was replaced; reading the new one from its start", name)
            state = self.files[name] = FileState(name=name, inode=st.st_ino)
        if st.st_size != state.size:
            state.size = st.st_size
            state.changed_at = time.monotonic()
        if st.st_size < state.offset:
            log.warning(
                "spool file %s shrank below what was stored (%d < %d); skipping to its end",
                name,
                st.st_size,
                state.offset,
            )
            state.offset = st.st_size
            self.truncated += 1
        if st.st_size > state.offset:
            self._dirty.add(name)

    def backlog(self) -> tuple[int, int]:
        """(files, bytes) not yet stored."""
        files = bytes_ = 0
        for state in self.files.values():
            if state.size > state.offset:
                files += 1
                bytes_ += state.size - state.offset
        return files, bytes_

    # -- reading ----------------------------------------------------------------------------

    def read_batch(self, max_lines: int, max_bytes: int, skip: Set[str] = frozenset()) -> Batch:
        """The next batch from the stored offsets, leaving out the files in `skip` (those of a
        batch being committed, whose offsets are about to move)."""
        batch = Batch()
        # Oldest files first (names end in the writer's start time), so a backlog drains in order.
        for name in sorted(self._dirty, key=_start_ns):
            if batch.lines >= max_lines or batch.bytes >= max_bytes:
                break
            if name in skip:
                continue
            state = self.files.get(name)
            if state is None or state.size <= state.offset:
                self._unmark(name, state, state.offset if state else 0)
                continue
            seen = state.size
            chunk = self._read(state, max_lines - batch.lines, max_bytes - batch.bytes)
            if chunk is None:
                self._unmark(name, state, seen)
                continue
            batch.chunks.append(chunk)
            batch.lines += len(chunk.lines)
            batch.bytes += chunk.end_offset - state.offset
            batch.corrupt += chunk.corrupt
            self._unmark(name, state, chunk.end_offset)
        return batch

    def _unmark(self, name: str, state: FileState | None, upto: int) -> None:
        """Nothing more to read in `name` past `upto`, unless it grew or changed meanwhile."""
        with self._marks:
            if self.files.get(name) is state and (state is None or upto >= state.size):
                self._dirty.discard(name)

    def _read(self, state: FileState, max_lines: int, max_bytes: int) -> FileChunk | None:
        want = min(state.size - state.offset, max(max_bytes, 1 << 16), MAX_RECORD_BYTES)
        try:
            with open(self.path / state.name, "rb") as f:
                f.seek(state.offset)
                data = f.read(want)
        except FileNotFoundError:
            return None
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            if len(data) < MAX_RECORD_BYTES:
                return None  # a record still being written
            log.warning("spool file %s: %d bytes without a newline, skipped", state.name, len(data))
            self.skipped_bytes += len(data)
            return FileChunk(state=state, end_offset=state.offset + len(data), corrupt=1)
        chunk = FileChunk(state=state, end_offset=state.offset)
        pos = 0
        for raw in data[: cut - 1].split(b"\n"):
            pos += len(raw) + 1
            if _parse_into(chunk, raw) and len(chunk.lines) >= max_lines:
                break
        chunk.end_offset = state.offset + pos
        return chunk

    def commit(self, batch: Batch, stored: Stored | None = None) -> list[FileState]:
        """The store committed `batch` (with the placements of `stored`): move the files'
        states past it. The one place a commit's result reaches the bookkeeping; returns the
        states of the files whose end is now stored."""
        for run in stored.runs if stored is not None else ():
            state = run.chunk.state
            state.task_id, state.seq_base = run.task_id, run.seq_base
            state.head, state.tail, state.max_seq = run.head, run.tail, run.max_seq
        ended = []
        for chunk in batch.chunks:
            state = chunk.state
            state.offset = chunk.end_offset
            if chunk.end is not None and state.registered:
                state.ended = True
                ended.append(state)
            if state.size > state.offset:
                self._dirty.add(state.name)
        return ended

    def lost(self, state: FileState) -> None:
        """The store finalized `state`'s run without its end record (`Store.lose`)."""
        state.ended = True


def _start_ns(name: str) -> int:
    parsed = spool.parse_file_name(name)
    return 0 if parsed is None else parsed.ns


def _parse_into(chunk: FileChunk, raw: bytes) -> bool:
    """Add one record to the chunk; returns True for a line record. Bad records are counted."""
    try:
        rec = _loads(raw)
        kind = rec["k"]
        if kind == spool.LINE:
            message = rec["m"]
            stream = rec["s"]
            seq = rec["n"]
            t = rec["t"]
            if (
                type(seq) is not int
                or seq < 1
                or stream not in _STREAMS
                or not isinstance(message, str)
                or not isinstance(t, _NUMBER)
                or not math.isfinite(t)
            ):
                raise ValueError("bad line record")
            level = rec.get("l")
            if "\x00" in message or not message.isascii():  # else clean already
                message = clean_text(message)
            chunk.lines.append(
                Line(seq, float(t), stream, level if isinstance(level, str) else None, message)
            )
            return True
        if kind == spool.START:
            if rec.get("v") != spool.VERSION or spool.task_id_problem(rec.get("task_id")):
                raise ValueError("bad start record")  # an id Postgres could not store or index
            chunk.start = rec
        elif kind == spool.PROGRESS:
            chunk.progress = rec
        elif kind == spool.END:
            if not isinstance(rec.get("state"), str):
                raise ValueError("bad end record")
            chunk.end = rec
        else:
            raise ValueError(f"unknown record kind {kind!r}")
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError):
        chunk.corrupt += 1
        if chunk.corrupt == 1:
            log.warning("spool file %s: skipped a corrupt record: %.200r", chunk.state.name, raw)
    return False


def _loads(raw: bytes) -> Any:
    # orjson reads a record in a tenth of the time; what it refuses (a lone surrogate escape,
    # NaN, a huge int) goes to the standard library, so a record means what it always meant.
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)
