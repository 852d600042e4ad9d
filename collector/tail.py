"""Following the spool directory: which files exist, how far each is stored, what is new.

`SpoolDir.read_batch` turns the unstored bytes of many files into one `Batch` of parsed
records, never past a file's last newline (a trailing partial record is left for later), and
stops at the batch bounds. Nothing here touches the database: offsets advance only when
`commit` is called after the store has committed the batch.

The spool directory is a trust boundary: anyone who can write it can put anything there. Only
regular files whose inode is the one listed are read (opened without following a link and
without blocking), every record is checked and made storable (`collector.records`) before it
leaves here, and raw record content is never logged.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Set
from pathlib import Path

from capture_shim import spool
from collector import records
from collector.batch import Batch, FileChunk, FileState, shown
from collector.stored import Stored
from tasklog.core.constants import DEFAULT_MAX_LINE_BYTES

log = logging.getLogger("tasklog.collector")

#: A record longer than this without a newline is corrupt; it is skipped, not waited for.
MAX_RECORD_BYTES = 8 << 20
#: The smallest share of a batch a file is given: with thousands of files waiting, a batch
#: holds fewer of them rather than a few lines of each (the next batch serves the others).
MIN_SHARE_LINES = 256
MIN_SHARE_BYTES = 64 << 10
#: Batches a backlog's files are spread over: the two in flight (`Pipeline.drain`: one
#: committing, one being written) and the one read meanwhile, from other files than theirs.
SPREAD = 3
#: Opening a spool file: never through a link, never waiting on a FIFO's writer.
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def inode_of(st: os.stat_result) -> int:
    """The inode as Postgres's bigint holds it (some file systems use all 64 bits)."""
    ino = st.st_ino
    return ino - (1 << 64) if ino >= 1 << 63 else ino


class SpoolDir:
    """The spool directory's files and how far each is stored (see the module)."""

    def __init__(
        self,
        path: Path,
        known: dict[str, FileState],
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
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
        #: Batches read so far (`FileState.served` numbers them).
        self._batches = 0
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
        """Files that the file watcher (`collector.watcher`) says changed."""
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
        self._batches += 1
        waiting: list[FileState] = []
        # A task's runs are read in the order they started: a later run's file waits while an
        # earlier run's is in flight, else its lines would get the task's next seqs before the
        # earlier run's last lines did (a retry read whole while its first run's start alone
        # is being committed).
        runs_in_flight = _earliest_runs(skip)
        for name in list(self._dirty):
            state = self.files.get(name)
            if state is None or state.size <= state.offset:
                self._unmark(name, state, state.offset if state else 0)
            elif name not in skip and not _after_a_run_in_flight(name, runs_in_flight):
                waiting.append(state)
        # Fair: the files least recently served first (a new task's file before any backlog),
        # then in the order the collector found them; a name buys nothing. Each file gets its
        # share of the batch, so many backlogs drain side by side and a new file's lines wait
        # for one batch at most.
        _take_turns(waiting)
        # A few files' backlogs are spread over `SPREAD` batches, each holding a part of the
        # files (those in `skip` counted): the batch read while two are in flight then finds
        # files of its own, where batches holding every file left it none until both were done.
        per_batch = max(-(-(len(waiting) + len(skip)) // SPREAD), 1)
        share_lines = max(max_lines // per_batch, MIN_SHARE_LINES)
        share_bytes = max(max_bytes // per_batch, MIN_SHARE_BYTES)
        for state in waiting:
            if batch.lines >= max_lines or batch.bytes >= max_bytes:
                break
            name = state.name
            seen = state.size
            state.served = self._batches
            chunk = self._read(
                state,
                min(share_lines, max_lines - batch.lines),
                min(share_bytes, max_bytes - batch.bytes),
            )
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
        chunk.end_offset = state.offset + records.read(chunk, data, cut, state.offset, max_lines)
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


def _earliest_runs(names: Set[str]) -> dict[str, int]:
    """Each task's earliest start among `names` (spool file names), by the names' stems."""
    earliest: dict[str, int] = {}
    for name in names:
        parsed = spool.parse_file_name(name)
        if parsed is not None:
            earliest[parsed.stem] = min(parsed.ns, earliest.get(parsed.stem, parsed.ns))
    return earliest


def _after_a_run_in_flight(name: str, runs_in_flight: dict[str, int]) -> bool:
    """Whether `name` is a later run of a task that has an earlier run in flight."""
    if not runs_in_flight:
        return False
    parsed = spool.parse_file_name(name)
    return parsed is not None and runs_in_flight.get(parsed.stem, parsed.ns) < parsed.ns


def _turn(state: FileState) -> tuple[int, float]:
    return state.served, state.seen_at


def _take_turns(waiting: list[FileState]) -> None:
    """Order a batch's files fairly (`_turn`), except that one task's own files (its runs,
    one file per delivery) keep the order they were started in, in the places fairness gives
    them: a run is numbered in the order stored. A name reorders only its own task's files."""
    waiting.sort(key=_turn)
    places: dict[str, list[tuple[int, str, int]]] = {}
    for place, state in enumerate(waiting):
        parsed = spool.parse_file_name(state.name)
        stem, started = (parsed.stem, parsed.ns) if parsed else (state.name, 0)
        places.setdefault(stem, []).append((started, state.name, place))
    for held in places.values():
        if len(held) > 1:
            runs = [waiting[place] for *_, place in sorted(held)]
            for (*_, place), state in zip(held, runs, strict=True):
                waiting[place] = state


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
