"""Following the spool directory: which files exist, how far each is stored, what is new.

`SpoolDir.read_batch` turns the unstored bytes of many files into one `Batch` of parsed
records, never past a file's last newline (a trailing partial record is left for later), and
stops at the batch bounds. Nothing here touches the database: offsets advance only when
`commit` is called after the store has committed the batch.

The spool directory is a trust boundary: anyone who can write it can put anything there. Only
regular files whose inode is the one listed are read (opened without following a link and
without blocking), every field is validated and made storable (`collector.fields`) before it
leaves here, and raw record content is never logged.
"""

from __future__ import annotations

import json
import logging
import math
import os
import stat
import threading
import time
from collections.abc import Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from capture_shim import spool
from collector import fields

if TYPE_CHECKING:
    from collector.plan import Stored

log = logging.getLogger("tasklog.collector")

#: A record longer than this without a newline is corrupt; it is skipped, not waited for.
MAX_RECORD_BYTES = 8 << 20
#: The shim's default TASKLOG_MAX_LINE_BYTES.
DEFAULT_LINE_BYTES = 16384
#: Highest per-run seq `n` accepted: far beyond any real run (a line a microsecond for 12
#: days), and far below bigint and the 2**53 a browser can hold once a run's base is added.
MAX_RUN_SEQ = 1 << 40
_STREAMS = frozenset({spool.STDOUT, spool.STDERR, spool.LOG})
_NUMBER = (int, float)
#: Records split beyond a batch's room for lines (start, progress and end records).
_SPLIT_SLACK = 16
#: Opening a spool file: never through a link, never waiting on a FIFO's writer.
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


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

    @property
    def registered(self) -> bool:
        return self.task_id is not None


def inode_of(st: os.stat_result) -> int:
    """The inode as Postgres's bigint holds it (some file systems use all 64 bits)."""
    ino = st.st_ino
    return ino - (1 << 64) if ino >= 1 << 63 else ino


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
    #: Highest per-run seq read so far: a line must go beyond it (see `_parse_into`).
    last_seq: int = 0
    max_line_bytes: int = DEFAULT_LINE_BYTES


@dataclass
class Batch:
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


class SpoolDir:
    def __init__(
        self,
        path: Path,
        known: dict[str, FileState],
        max_line_bytes: int = DEFAULT_LINE_BYTES,
    ) -> None:
        self.path = path
        self.files = known
        self.max_line_bytes = max_line_bytes
        #: Spool files whose name Postgres cannot store (not UTF-8): the daemon moves them aside.
        self.unstorable: set[str] = set()
        #: (name, inode) of entries refused as not regular files, each warned about once.
        self._refused: set[tuple[str, int]] = set()
        #: Files whose records claim another task than their name: name -> why (the daemon
        #: moves them aside).
        self.forged: dict[str, str] = {}
        #: Names never to read again in this process (quarantined, or failed to be).
        self._ignored: set[str] = set()
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
                if entry.name.endswith(spool.SUFFIX):
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if self._acceptable(entry.name, st):
                        seen.add(entry.name)
                        self._observe(entry.name, st)
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
            if self._acceptable(name, st):
                self._observe(name, st)

    def _acceptable(self, name: str, st: os.stat_result) -> bool:
        """A spool file is a regular file with a storable name; anything else is left alone
        (a link to a file the collector may read, a FIFO that would block) with one warning."""
        if name in self._ignored:
            return False
        if not stat.S_ISREG(st.st_mode):
            if (name, st.st_ino) not in self._refused:
                self._refused.add((name, st.st_ino))
                log.warning(
                    "spool entry %s is not a regular file (%s); ignored",
                    shown(name),
                    _kind(st.st_mode),
                )
            return False
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            self.unstorable.add(name)
            return False
        return True

    def _observe(self, name: str, st: os.stat_result) -> None:
        with self._marks:
            self._observe_locked(name, st)

    def _observe_locked(self, name: str, st: os.stat_result) -> None:
        if name in self._ignored:
            return
        state = self.files.get(name)
        inode = inode_of(st)
        if state is None:
            state = self.files[name] = FileState(name=name, inode=inode)
        elif state.inode != inode:
            log.warning(
                "spool file %s was replaced; reading the new one from its start", shown(name)
            )
            state = self.files[name] = FileState(name=name, inode=inode)
        state.uid = st.st_uid
        if st.st_size != state.size:
            state.size = st.st_size
            state.changed_at = time.monotonic()
        if st.st_size < state.offset:
            log.warning(
                "spool file %s shrank below what was stored (%d < %d); skipping to its end",
                shown(name),
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
            if chunk.forged is not None:
                self.forged[name] = chunk.forged
                self._unmark(name, state, state.size)
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
        data = self._pread(state, want)
        if data is None:
            return None
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            if len(data) < MAX_RECORD_BYTES:
                return None  # a record still being written
            log.warning(
                "spool file %s: %d bytes without a newline, skipped", shown(state.name), len(data)
            )
            self.skipped_bytes += len(data)
            return FileChunk(state=state, end_offset=state.offset + len(data), corrupt=1)
        chunk = FileChunk(
            state=state,
            end_offset=state.offset,
            last_seq=state.max_seq,
            max_line_bytes=self.max_line_bytes,
        )
        pos = 0
        while pos < cut and len(chunk.lines) < max_lines:
            # Split only about as many records as the batch has room for: a read holds up to
            # 8 MB, and making a bytes object of each record costs as much as parsing a tenth.
            room = max_lines - len(chunk.lines) + _SPLIT_SLACK
            records = (data if pos == 0 else data[pos:]).split(b"\n", room)
            # The last piece is what follows the records split: the unsplit rest, or the
            # bytes after the last newline (a record still being written, or nothing).
            rest = len(records) > room
            records.pop()
            used, full = _parse_all(chunk, records, state.offset + pos, max_lines)
            pos += used
            if full or not rest:
                break
        chunk.end_offset = state.offset + min(pos, cut)
        return chunk

    def _pread(self, state: FileState, size: int) -> bytes | None:
        """Up to `size` bytes at the stored offset of the very file that was listed; None if
        it is gone or is no longer that regular file (replaced by a link, a FIFO...)."""
        try:
            fd = os.open(self.path / state.name, _OPEN_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as exc:  # ELOOP: a link now stands there; EACCES, ENXIO...
            self._refuse(state, f"cannot be opened safely ({exc.strerror})")
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self._refuse(state, f"is now a {_kind(st.st_mode)}")
                return None
            if inode_of(st) != state.inode:
                return None  # replaced by another file: the next scan sees it as new
            # A hard link to a file the writer may not read is left to the kernel
            # (fs.protected_hardlinks, on by default): a second name is not refused here.
            return os.pread(fd, size, state.offset)
        finally:
            os.close(fd)

    def _refuse(self, state: FileState, why: str) -> None:
        if (state.name, state.inode) not in self._refused:
            self._refused.add((state.name, state.inode))
            log.warning("spool file %s %s; not read", shown(state.name), why)

    def commit(self, batch: Batch, stored: Stored | None = None) -> list[FileState]:
        """The store committed `batch` (with the placements of `stored`): move the files'
        states past it. The one place a commit's result reaches the bookkeeping; returns the
        states of the files whose end is now stored."""
        for run in stored.runs if stored is not None else ():
            state = run.chunk.state
            state.task_id, state.seq_base, state.segments = run.task_id, run.seq_base, run.segments
            state.head, state.tail, state.max_seq = run.head, run.tail, run.max_seq
        ended = []
        for chunk in batch.chunks:
            state = chunk.state
            state.offset = chunk.end_offset
            if chunk.start is not None and isinstance(chunk.start.get("t"), float):
                state.started = chunk.start["t"]
            if chunk.start is not None:
                ppid = chunk.start.get("ppid")
                state.parent_pid = ppid if type(ppid) is int and 1 < ppid < 1 << 31 else None
            if chunk.end is not None and state.registered:
                state.ended = True
                ended.append(state)
            if state.size > state.offset:
                self._dirty.add(state.name)
        return ended

    def ignore(self, name: str) -> None:
        """Never read `name` again (it was moved aside, or should have been)."""
        with self._marks:
            self._ignored.add(name)
            self.files.pop(name, None)
            self._dirty.discard(name)

    def drop(self, state: FileState) -> None:
        """`ignore` a file the collector was following."""
        self.ignore(state.name)

    def lost(self, state: FileState) -> None:
        """The store finalized `state`'s run without its end record (`Store.lose`)."""
        state.ended = True


def _start_ns(name: str) -> int:
    parsed = spool.parse_file_name(name)
    return 0 if parsed is None else parsed.ns


def _parse_all(
    chunk: FileChunk, records: list[bytes], offset: int, max_lines: int
) -> tuple[int, bool]:
    """Parse records into the chunk until it holds `max_lines` lines; returns the bytes used
    (each record with its newline) and whether the chunk is full.

    The common record, a well-formed line of ASCII text, is checked inline: the same checks as
    `_parse_into`, without a call, an exception frame and a class instance per line. Anything
    else (other kinds, text to clean or cut, a value out of range, a record orjson refuses)
    goes to `_parse_into`, which decides exactly as before.
    """
    lines = chunk.lines
    append = lines.append
    new = tuple.__new__
    loads = orjson.loads
    streams = _STREAMS
    limit = chunk.max_line_bytes
    last = chunk.last_seq
    pos = 0
    for raw in records:
        start = pos
        pos += len(raw) + 1
        try:
            rec = loads(raw)
        except ValueError:
            rec = None
        if type(rec) is dict and rec.get("k") == "line":
            seq = rec.get("n")
            t = rec.get("t")
            message = rec.get("m")
            stream = rec.get("s")
            level = rec.get("l")
            if (
                type(seq) is int
                and last < seq <= MAX_RUN_SEQ
                and type(stream) is str
                and stream in streams
                and type(message) is str
                and message.isascii()
                and len(message) <= limit
                and "\x00" not in message
                and type(t) is float
                and -_FINITE < t < _FINITE
                and (level is None or _plain(level, fields.LEVEL_BYTES))
            ):
                append(new(Line, (seq, t, stream, level, message)))
                chunk.last_seq = last = seq
                if len(lines) >= max_lines:
                    return pos, True
                continue
        if _parse_into(chunk, raw, offset + start):
            last = chunk.last_seq
            if len(lines) >= max_lines:
                return pos, True
    return pos, False


def _plain(value: object, limit: int) -> bool:
    """ASCII text without NUL, at most `limit` bytes: storable as it is (`fields` would keep
    it unchanged)."""
    return type(value) is str and value.isascii() and "\x00" not in value and len(value) <= limit


#: Beyond any finite float: `-_FINITE < t < _FINITE` is False for NaN and the infinities.
_FINITE = float("inf")


def _parse_into(chunk: FileChunk, raw: bytes, offset: int = 0) -> bool:
    """Add one record to the chunk; returns True for a line record. Bad records are counted.

    Every value kept is checked and made storable here or in `collector.fields`: whatever a
    file holds, nothing read from it can make Postgres refuse a batch.
    """
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
                or not chunk.last_seq < seq <= MAX_RUN_SEQ  # seqs only go up: none is reused
                or stream not in _STREAMS
                or not isinstance(message, str)
                or not isinstance(t, _NUMBER)
                or not math.isfinite(t)
            ):
                raise ValueError("bad line record")
            level = rec.get("l")
            if "\x00" in message or not message.isascii():  # else clean already
                message = fields.clean_text(message)
            if len(message) > chunk.max_line_bytes // 4:  # a str of n chars: at most 4n bytes
                message = fields.cut_line(message, chunk.max_line_bytes)
            chunk.lines.append(
                Line(
                    seq,
                    float(t),
                    stream,
                    fields.short_text(level, fields.LEVEL_BYTES),
                    message,
                )
            )
            chunk.last_seq = seq
            return True
        if kind == spool.START:
            if rec.get("v") != spool.VERSION or spool.task_id_problem(rec.get("task_id")):
                raise ValueError("bad start record")  # an id Postgres could not store or index
            # A file speaks only for the task its name names (the shim names it so): a start
            # record claiming another task would write over that task's outcome.
            parsed = spool.parse_file_name(chunk.state.name)
            if parsed is None or parsed.stem != spool.safe_name(rec["task_id"]):
                chunk.forged = "its start record claims a task its file name does not name"
                return False
            chunk.start = rec
        elif kind == spool.PROGRESS:
            chunk.progress = rec
        elif kind == spool.END:
            if not isinstance(rec.get("state"), str):
                raise ValueError("bad end record")
            chunk.end = rec
        else:
            raise ValueError("unknown record kind")
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
        chunk.corrupt += 1
        if chunk.corrupt == 1:
            # Where and why, never the record itself: it may hold what a task printed.
            log.warning(
                "spool file %s: skipped a corrupt record at byte %d (%s)",
                shown(chunk.state.name),
                offset,
                _why(exc),
            )
    return False


def _why(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return "a field is missing"
    if isinstance(exc, ValueError) and str(exc).startswith("bad "):
        return str(exc)
    return "not a JSON record" if isinstance(exc, ValueError) else type(exc).__name__


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "symbolic link"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return "special file"


def _loads(raw: bytes) -> Any:
    # orjson reads a record in a tenth of the time; what it refuses (a lone surrogate escape,
    # NaN, a huge int) goes to the standard library, so a record means what it always meant.
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)
