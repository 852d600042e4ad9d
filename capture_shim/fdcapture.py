"""File-descriptor-level capture: what a task writes to fd 1 and 2, not only to `sys.stdout`.

Replacing `sys.stdout` (capture.py) sees Python-level writes only. A subprocess, `os.write(1, …)`
or a C library's `printf` write to the process's descriptors 1 and 2, so for the duration of a
task this module points those at pipes of its own and feeds what comes out of them into the
task's `TaskCapture`.

Where it is on
    Only where one task at a time owns the whole process: the prefork and solo pools, on the main
    thread, without gevent/eventlet monkey-patching (`fd_capture_safe`). Descriptors are
    process-wide: in the threads pool or a green pool, concurrent tasks share fd 1/2, their
    output could not be told apart, and the worker's own threads would be captured with it; there
    the shim stays at the Python level. The pool is learnt from Celery's `worker_init` signal
    (and `worker_process_init`, which only prefork children send); a task run outside a worker
    we know stays at the Python level too. `TASKLOG_CAPTURE_FD=false` turns it off.

One task (`FdSession`)
    Begin: flush Python's and C's stdio buffers (what is in them belongs to the worker), keep
    fd 1 and 2 with `dup` (close-on-exec, so children never inherit the copies), make one pipe
    per stream (stdout and stderr stay apart; a pty would merge them), `dup2` the write ends
    onto 1 and 2, and start a reader thread. The reader drains both pipes continuously, so a
    child writing tens of megabytes never blocks on a full pipe for longer than it takes to copy
    its output, and decodes UTF-8 incrementally (backslashreplace), so a character split
    between two reads survives.

    Celery's own logging handlers that write to fd 1/2 ("Task … succeeded") and the capture's
    fallback streams are pointed at the kept descriptors for the session: the worker's log stays
    the worker's, and a failing spool cannot feed its fallback text back into the pipe.

    Order: Python-level writes still go straight to the `TaskCapture`. Before the first piece of
    a new line from Python, what waits in the pipes is taken in first (under the lock the
    reader holds while it reads and feeds), so fd-level output written before a `print` is
    recorded before it, exactly. The session is the capture's `Gate`: output may be waiting if
    a pipe is readable (`ready`: `probe`, an epoll instance holding both pipes, waited on with
    no timeout; elsewhere than Linux the pipes are polled) or the reader holds some: holding
    the lock, it raises the capture's `gate_pending` before it reads and lowers it once what it
    read is delivered. Data still in a pipe is covered by the poll, data the reader took out of
    one by the flag (read after the poll): one system call per Python-level line, none for the
    rest of a line already open. Output in a pipe is known only to the kernel, so no cheaper
    test is exact. Prints keep their exact order with each other across streams. Between
    stdout and stderr written at fd level the order is the order the reader saw them in, as
    with any two pipes.

    End: flush the stdio buffers into the pipes, put fd 1/2 back with `dup2` from the kept
    copies (inheritable flag as it was), and wait up to `DETACH_GRACE` seconds for end-of-file.
    A child process left running still holds a write end: the session then detaches. The task
    gets a warning line, and the reader keeps draining those pipes in the background,
    forwarding the bytes to the worker's original stdout/stderr (where they would have gone
    without the shim) until the child closes them; they never reach the next task, which has
    pipes of its own.

`TASKLOG_TEE` also writes everything captured to the worker's original stdout/stderr (with
fd capture off, to the streams `sys.stdout`/`sys.stderr` replaced).

Nothing raises into a task: an `OSError` at begin leaves the task at Python-level capture
(counted in `FdStats.fallbacks`); later errors are counted and the descriptors are put back
regardless. A process forked by the task (multiprocessing's "fork") inherits the pipes; its
Python-level writes go to its fd 1/2, that is through the pipes into the task's capture.
"""

from __future__ import annotations

import codecs
import logging
import os
import select
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

from capture_shim import fdio, spool
from capture_shim.capture import TaskCapture, TextOut, warn_once
from capture_shim.config import ShimConfig
from capture_shim.fdio import FdStats

__all__ = [
    "DETACH_GRACE",
    "FdSession",
    "FdStats",
    "after_fork_in_child",
    "begin",
    "end",
    "fd_capture_safe",
    "follow_forks",
    "set_pool",
    "set_pool_child",
]

#: Seconds to wait at a task's end for its pipes to close before detaching a lingering child.
DETACH_GRACE = 0.5

_STREAMS = {1: spool.STDOUT, 2: spool.STDERR}
_FD_OF = {spool.STDOUT: 1, spool.STDERR: 2}
_READ_SIZE = 1 << 16
#: Reads per pipe per turn of the lock, so a busy pipe cannot hold a print up for long.
_READS_PER_TURN = 16
#: Asked of the kernel per pipe (best effort): fewer wake-ups for a burst. Pages are used lazily.
_SAFE_POOLS = frozenset({"celery.concurrency.prefork:TaskPool", "celery.concurrency.solo:TaskPool"})
_decoder = codecs.getincrementaldecoder("utf-8")


# -- where it is safe -----------------------------------------------------------------------

#: True in a prefork or solo worker, False in another pool, None when no worker said.
_pool_safe: bool | None = None


def set_pool(pool_cls: object) -> None:
    """What a worker said at `worker_init`: the pool its tasks run in."""
    global _pool_safe
    _pool_safe = _is_safe_pool(pool_cls)


def set_pool_child() -> None:
    """This process is a prefork child (`worker_process_init`): one task at a time."""
    global _pool_safe
    _pool_safe = True


def _is_safe_pool(pool_cls: object) -> bool:
    if isinstance(pool_cls, str):  # an alias or "module:Class", not imported yet
        from celery.concurrency import ALIASES

        return ALIASES.get(pool_cls, pool_cls) in _SAFE_POOLS
    if isinstance(pool_cls, type):  # subclasses of the two pools are fine too
        return any(f"{c.__module__}:{c.__qualname__}" in _SAFE_POOLS for c in pool_cls.__mro__)
    return False


def fd_capture_safe() -> bool:
    """Whether this task owns the process: prefork or solo pool, main thread, not green."""
    return (
        _pool_safe is True
        and threading.current_thread() is threading.main_thread()
        and not _green()
    )


def _green() -> bool:
    gevent_monkey = sys.modules.get("gevent.monkey")
    if gevent_monkey is not None and gevent_monkey.is_anything_patched():
        return True
    patcher = sys.modules.get("eventlet.patcher")
    return patcher is not None and bool(patcher.is_monkey_patched("thread"))


# -- the two hooks ----------------------------------------------------------------------------

_session: FdSession | None = None


def begin(cap: TaskCapture, config: ShimConfig) -> FdSession | None:
    """Start fd-level capture for `cap` where safe and wanted; never raises."""
    global _session
    if _session is not None:  # the last task's end never came (a hook that could not run)
        stale, _session = _session, None
        stale.end()
    if not (config.capture_fd and fd_capture_safe()):
        if config.tee:
            cap.route_through(_python_tee(cap))
        return None
    session = FdSession(cap, tee=config.tee)
    try:
        session.start()
    except Exception as exc:
        FdStats.fallbacks += 1
        warn_once(
            f"fd-start:{type(exc).__name__}:{getattr(exc, 'errno', None)}",
            f"fd-level capture could not start ({exc!r}); capturing Python-level output only",
        )
        return None
    _session = session
    return session


def end(cap: TaskCapture) -> None:
    """Stop fd-level capture of `cap`, if it has one, before its end record; never raises."""
    global _session
    session = _session
    if session is None or session.cap is not cap:
        return
    _session = None
    session.end()


#: Sessions started in this process and not ended, the detached ones included.
_live: weakref.WeakSet[FdSession] = weakref.WeakSet()


def after_fork_in_child() -> None:
    """The at-fork hook (`follow_forks` registers it).

    A task forked (multiprocessing "fork"): the reader thread is not here, its lock may be held
    forever; Python-level text goes to fd 1/2 (the pipes) instead.
    """
    for session in list(_live):
        session.forked = True
        session.cap.order_with(None)
        session.cap.route_through(session.write_forked)


_follows_forks = False
_follow_lock = threading.Lock()


def follow_forks() -> None:
    """Register `after_fork_in_child`, once per process (`hooks.connect_process_hooks`, and
    the first session, whichever comes first)."""
    global _follows_forks
    with _follow_lock:
        if not _follows_forks:
            _follows_forks = True
            os.register_at_fork(after_in_child=after_fork_in_child)


# -- one task ---------------------------------------------------------------------------------


class FdSession:
    """Descriptors 1 and 2 of this process piped into one task's capture, from start to end."""

    def __init__(self, cap: TaskCapture, tee: bool = False) -> None:
        self.cap = cap
        self.tee = tee
        #: Set in a child forked by the task; see `after_fork_in_child`.
        self.forked = False
        self._lock = threading.Lock()
        self._saved: dict[int, int] = {}  # 1/2 → our copy of what they were
        self._inheritable: dict[int, bool] = {}
        self._identity: dict[int, tuple[int, int]] = {}
        #: Open read ends → (1 or 2, incremental decoder).
        self._readers: dict[int, tuple[int, Any]] = {}
        self._poller = select.poll()  # the reader thread's
        #: The `Gate` the capture asks before a new Python-level line: the pipes' read ends in
        #: an epoll instance on Linux (one system call of constant cost however many pipes)
        #: and its descriptor; a poll object and -1 elsewhere.
        self.probe, self.probe_fd = fdio.new_probe()
        self.ready = fdio.readiness(self.probe)
        self.read_ends: tuple[int, ...] = ()
        self._attached = True
        self._ended = False
        self._closed = threading.Event()  # every read end reached end-of-file
        self._thread: threading.Thread | None = None
        self._swapped: list[tuple[logging.StreamHandler[Any], Any]] = []
        #: The capture's fallback targets this session replaced, to put back at the end.
        self._fallback: dict[str, TextOut] = {}

    # -- begin ------------------------------------------------------------------------------

    def start(self) -> None:
        """Redirect fd 1/2 into pipes; raises OSError with everything undone."""
        fdio.flush_stdio()
        write_ends: dict[int, int] = {}
        redirected: list[int] = []
        try:
            for fd in (1, 2):
                self._inheritable[fd] = os.get_inheritable(fd)
                saved = self._saved[fd] = os.dup(fd)
                info = os.fstat(saved)
                self._identity[fd] = (info.st_dev, info.st_ino)
                read_end, write_ends[fd] = os.pipe()
                self._readers[read_end] = (fd, _decoder(errors="backslashreplace"))
                os.set_blocking(read_end, False)
                fdio.grow_pipe(read_end)
            for fd in (1, 2):
                os.dup2(write_ends[fd], fd, inheritable=True)
                redirected.append(fd)
        except BaseException:
            for fd in redirected:
                fdio.quiet(os.dup2, self._saved[fd], fd, self._inheritable[fd])
            for number in [*self._readers, *self._saved.values()]:
                fdio.quiet(os.close, number)
            raise
        finally:  # on success fd 1/2 are now the only write ends here
            for number in write_ends.values():
                fdio.quiet(os.close, number)
        for read_end in self._readers:
            self._poller.register(read_end, select.POLLIN)
            self.probe.register(read_end, select.EPOLLIN if fdio.EPOLL else select.POLLIN)
        self.read_ends = tuple(self._readers)
        follow_forks()
        self._redirect_worker_streams()
        self.cap.order_with(self)
        if self.tee:
            self.cap.route_through(self.write_tee)
        _live.add(self)
        self._thread = threading.Thread(target=self._run, name="tasklog-fd-reader", daemon=True)
        self._thread.start()
        FdStats.sessions += 1

    def _redirect_worker_streams(self) -> None:
        """Point what writes to fd 1/2 on the worker's behalf at the kept descriptors."""
        for handler in fdio.stream_handlers():
            fd = fdio.std_fileno(handler.stream)
            if fd in self._saved:
                old = handler.setStream(fdio.FdWriter(self._saved[fd], handler.stream))
                self._swapped.append((handler, old))
        for stream in (spool.STDOUT, spool.STDERR, spool.LOG):
            target = self.cap.fallback(stream)
            fd = fdio.std_fileno(target)
            if fd in self._saved:
                self._fallback[stream] = self.cap.set_fallback(
                    stream, fdio.FdWriter(self._saved[fd], target)
                )

    # -- during -----------------------------------------------------------------------------

    def take_in(self) -> None:
        """Deliver what the pipes hold now: the capture asks before a new Python-level line."""
        with self._lock:
            for read_end in list(self._readers):
                self._drain(read_end)

    def write_tee(self, stream: str, text: str) -> None:
        """`TASKLOG_TEE`: Python-level text captured and echoed to the worker's own fd."""
        self.cap.write(stream, text)
        if stream in _FD_OF:
            fdio.write_all(self._saved[_FD_OF[stream]], text.encode("utf-8", "backslashreplace"))

    def write_forked(self, stream: str, text: str) -> None:
        """In a child the task forked: Python-level text into the pipes, like its fd output."""
        fdio.write_all(_FD_OF.get(stream, 2), text.encode("utf-8", "backslashreplace"))

    def _run(self) -> None:
        try:
            cap = self.cap
            while self._readers:
                events = self._poller.poll()
                with self._lock:
                    # Raised before reading, lowered once delivered, inside the lock: what the
                    # reader took out of a pipe and holds, the print path learns of here.
                    cap.gate_pending = True
                    for read_end, _ in events:
                        if read_end in self._readers:
                            self._drain(read_end)
                    cap.gate_pending = False
        except Exception as exc:
            FdStats.errors += 1
            warn_once(f"fd-reader:{type(exc).__name__}", f"fd capture reader stopped: {exc!r}")
        finally:
            with self._lock:
                for read_end in list(self._readers):
                    self._close_reader(read_end)
                self.cap.gate_pending = False  # a reader stopped by an error holds nothing
                if not self._attached:
                    self._close_saved()
            self._closed.set()

    def _drain(self, read_end: int) -> None:
        """Read what one pipe holds (a bounded amount) and deliver it. Lock held."""
        fd, decoder = self._readers[read_end]
        for _ in range(_READS_PER_TURN):
            try:
                data = os.read(read_end, _READ_SIZE)
            except BlockingIOError:
                return
            except OSError:  # EBADF: the task closed our descriptor
                FdStats.errors += 1
                data = b""
            if not data:
                self._close_reader(read_end)
                return
            if self.tee or not self._attached:
                fdio.write_all(self._saved[fd], data)
            if self._attached:
                text = decoder.decode(data)
                if text:
                    self.cap.feed(_STREAMS[fd], text)

    def _close_reader(self, read_end: int) -> None:
        fd, decoder = self._readers.pop(read_end)
        self.read_ends = tuple(self._readers)
        if self._attached:
            text = decoder.decode(b"", True)  # an incomplete character at the very end
            if text:
                self.cap.feed(_STREAMS[fd], text)
        fdio.quiet(self._poller.unregister, read_end)
        fdio.quiet(self.probe.unregister, read_end)
        fdio.quiet(os.close, read_end)

    # -- end --------------------------------------------------------------------------------

    def end(self) -> None:
        """Put fd 1/2 back, take in the rest, detach from a lingering child; never raises."""
        if self._ended or self._thread is None:  # ended already, or never started
            return
        self._ended = True
        _live.discard(self)
        try:
            self._end()
        except Exception as exc:
            FdStats.errors += 1
            warn_once(f"fd-end:{type(exc).__name__}", f"fd capture end failed: {exc!r}")

    def _end(self) -> None:
        fdio.flush_stdio()  # what the task left in Python's and C's buffers is the task's
        for handler, old in reversed(self._swapped):
            fdio.quiet(handler.setStream, old)
        for stream, target in self._fallback.items():
            self.cap.set_fallback(stream, target)
        self.cap.order_with(None)
        self.probe_fd = -1
        if fdio.EPOLL:  # the capture no longer polls it
            fdio.quiet(self.probe.close)
        if self.cap.route == self.write_tee:
            self.cap.route_through(None)
        for fd in (1, 2):
            self._restore(fd)
        if self.forked:
            return
        self._closed.wait(DETACH_GRACE)
        with self._lock:
            if self._readers:  # a child process still holds a write end
                for read_end in list(self._readers):
                    self._drain(read_end)
            if self._readers:
                self._attached = False
                FdStats.detached += 1
                self.cap.emit(
                    spool.LOG,
                    "celery-tasklog: a child process still holds the task's stdout/stderr; "
                    "what it writes from now on goes to the worker's own output",
                    "WARNING",
                )
                return
            self._close_saved()
        if self._thread is not None:
            self._thread.join(DETACH_GRACE)

    def _restore(self, fd: int) -> None:
        saved = self._saved[fd]
        try:
            info = os.fstat(saved)
            if (info.st_dev, info.st_ino) != self._identity[fd]:
                raise OSError(f"the task replaced descriptor {saved}")
            os.dup2(saved, fd, inheritable=self._inheritable[fd])
        except OSError as exc:
            # The task closed our copy: fd `fd` must not stay a pipe nobody may read.
            FdStats.errors += 1
            warn_once(f"fd-restore:{fd}", f"cannot restore fd {fd} ({exc}); using /dev/null")
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, fd, inheritable=self._inheritable[fd])
            os.close(null)
            self._identity.pop(fd, None)

    def _close_saved(self) -> None:
        for fd in list(self._saved):
            number = self._saved.pop(fd)
            if fd in self._identity:  # not if the task closed it (and the number went on)
                fdio.quiet(os.close, number)


def _python_tee(cap: TaskCapture) -> Callable[[str, str], None]:
    def route(stream: str, text: str) -> None:
        cap.write(stream, text)
        try:
            cap.fallback(stream).write(text)
        except Exception:
            FdStats.errors += 1

    return route
