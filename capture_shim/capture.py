"""Routing of a task's output into its spool file.

`sys.stdout` and `sys.stderr` are replaced once per process by a `StreamRouter`, which sends
each write to the capture of the *current task* (a context variable, so the threads pool's
concurrent tasks never see each other's output) or, outside any task, to the stream that was
there before. Nothing here may raise into a task: a failed spool write is counted and the text
goes to the original stream instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Any, Protocol, TextIO

from capture_shim import spool
from capture_shim.config import ShimConfig

_encode_line = spool.encode_line

_current: ContextVar[TaskCapture | None] = ContextVar("tasklog_capture", default=None)
_current_get = _current.get
_monotonic_ns = time.monotonic_ns
_os_write = os.write
_install_lock = threading.Lock()
#: End records a full spool refused, with their files: retried when the process starts a task.
_pending_ends: list[tuple[str, bytes]] = []
_pending_lock = threading.Lock()
_MAX_PENDING_ENDS = 256


#: What Python-level text of a task goes through: (stream, text), ending in `TaskCapture.write`.
Route = Callable[[str, str], None]


class Gate(Protocol):
    """fd-level capture as a `TaskCapture` sees it: output that may wait in its pipes.

    Before a new line from Python, the capture asks the gate to deliver what is waiting (so
    output written at fd level before a print is recorded before it), but only when its reader
    said something is pending or `next_look` has passed: no system call per print.
    """

    #: The reader thread saw output it has not delivered yet.
    pending: bool
    #: `time.monotonic_ns()` after which the pipes are looked at anyway.
    next_look: int

    def take_in(self) -> None:
        """Deliver (with `TaskCapture.feed`) whatever the pipes hold now."""


class TextOut(Protocol):
    """Where text goes when the spool cannot take it: a text stream, or fd capture's stand-in."""

    def write(self, text: str, /) -> int: ...


class Stats:
    """Process-wide counters, readable by tests and by whoever embeds the shim."""

    spool_errors = 0  # records that could not be written to a spool file
    internal_errors = 0  # exceptions inside the shim's own hooks, swallowed
    _warned: set[str] = set()  # noqa: RUF012 - process-wide on purpose


def warn_once(key: str, message: str) -> None:
    """Tell the worker's own stderr about a problem, once per process per kind."""
    if key in Stats._warned:
        return
    Stats._warned.add(key)
    # Inside a task whose fd 2 is captured, sys.__stderr__ leads back into the task's own
    # output; its fallback stream is the worker's real stderr.
    cap = _current.get()
    stream = sys.__stderr__ if cap is None else cap.fallback(spool.STDERR)
    try:
        stream.write(f"celery-tasklog: {message}\n")  # type: ignore[union-attr]
    except Exception:
        pass


def current() -> TaskCapture | None:
    return _current.get()


class StreamRouter:
    """A stand-in for sys.stdout/sys.stderr that follows the current task."""

    def __init__(self, original: TextIO, stream: str) -> None:
        self._original = original
        self._stream = stream

    def write(self, text: str) -> int:
        cap = _current_get()
        if cap is None:
            return self._original.write(text)
        cap.route(self._stream, text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if _current.get() is None:
            self._original.flush()

    @property
    def buffer(self) -> Any:
        cap = _current.get()
        if cap is None:
            return self._original.buffer
        return _BinaryRouter(cap, self._stream)

    def __getattr__(self, name: str) -> Any:
        # encoding, errors, isatty, fileno…: whatever the original stream says.
        return getattr(self._original, name)


class _BinaryRouter:
    """`sys.stdout.buffer` inside a task: bytes are decoded, invalid ones replaced visibly."""

    def __init__(self, cap: TaskCapture, stream: str) -> None:
        self._cap = cap
        self._stream = stream

    def write(self, data: bytes) -> int:
        self._cap.route(self._stream, bytes(data).decode("utf-8", "backslashreplace"))
        return len(data)

    def flush(self) -> None:
        pass


#: The worker's own bookkeeping ("Task x succeeded in 0.1s"), not the task's output.
_WORKER_LOGGERS = ("celery.", "kombu.", "amqp.")


class CaptureLogHandler(logging.Handler):
    """Copies `logging` records raised inside a task into its capture as `log` lines."""

    def emit(self, record: logging.LogRecord) -> None:
        cap = _current.get()
        if cap is None or record.name.startswith(_WORKER_LOGGERS):
            return
        try:
            text = self.format(record)
        except Exception:
            Stats.internal_errors += 1
            return
        for line in text.split("\n"):
            cap.emit(spool.LOG, line, record.levelname)


_log_handler = CaptureLogHandler()


def ensure_routing() -> None:
    """Put the routers and the log handler in place, again if someone replaced them.

    Celery swaps sys.stdout for its logging proxy and clears the root logger's handlers when a
    worker starts, after an app module (and so `install`) was imported; this runs at each task
    start to follow such changes. Cheap when nothing changed.
    """
    if (
        isinstance(sys.stdout, StreamRouter)
        and isinstance(sys.stderr, StreamRouter)
        and _log_handler in logging.root.handlers
    ):
        return
    with _install_lock:
        if not isinstance(sys.stdout, StreamRouter):
            sys.stdout = StreamRouter(sys.stdout, spool.STDOUT)
        if not isinstance(sys.stderr, StreamRouter):
            sys.stderr = StreamRouter(sys.stderr, spool.STDERR)
        if _log_handler not in logging.root.handlers:
            logging.root.addHandler(_log_handler)


class TaskCapture:
    """The output of one task run, on its way to one spool file."""

    def __init__(self, config: ShimConfig, task_id: str, start: dict[str, Any]) -> None:
        self.task_id = task_id
        self._config = config
        self._lock = threading.Lock()
        #: Per stream, the text of a line not ended yet.
        self._partial: dict[str, str] = {}
        #: Lines longer than this many characters may be over the byte limit: measured.
        self._cut_at = config.max_line_bytes // 4
        #: A line without its newline is let go past this many characters.
        self._max_partial = config.max_line_bytes
        #: fd capture's side, while it runs (`order_with`).
        self._gate: Gate | None = None
        #: Streams whose last Python-level write left a line open, no fd output since: the
        #: rest of that line needs no look at the pipes. Kept only with a gate.
        self._open: set[str] = set()
        self._seq = 0
        self._errors = 0
        self._started = time.monotonic()
        self._token: Token[TaskCapture | None] | None = None
        #: Where the routers send Python-level text: `write`, or what `route_through` set.
        #: Read it; change it with `route_through`.
        self.route: Route = self.write
        #: The exception and traceback text, when the task failed (set by a signal).
        self.failure: tuple[BaseException | None, str | None] = (None, None)
        self._spool: spool.SpoolFile | None = None
        # Where text goes when the spool cannot take it: the streams in place before routing.
        self._fallback: dict[str, TextOut] = {
            spool.STDOUT: _unrouted(sys.stdout),
            spool.STDERR: _unrouted(sys.stderr),
            spool.LOG: _unrouted(sys.stderr),
        }
        if _pending_ends:
            _retry_pending_ends()
        problem = spool.task_id_problem(task_id)
        if problem is not None:  # the task runs as ever; its output goes to the worker's streams
            warn_once(
                "task_id:" + ("long" if problem.endswith(")") else problem),
                f"task id {task_id[:80]!r} {problem}; its output is not captured",
            )
            return
        try:
            self._spool = spool.SpoolFile(config.spool_dir, task_id)
        except OSError as exc:
            self._fail("open", exc)
            return
        if not self._put(
            spool.encode({"k": spool.START, "v": spool.VERSION, "t": time.time(), **start})
        ):
            # A file without its start record could never be placed: give it up (unlinking
            # needs no space) and send this task's output to the original streams.
            with contextlib.suppress(OSError):
                self._spool.close()
                os.unlink(self._spool.path)
            self._spool = None

    # -- lifecycle --------------------------------------------------------------------------

    def activate(self) -> None:
        self._token = _current.set(self)

    def deactivate(self) -> None:
        if self._token is not None:
            try:
                _current.reset(self._token)
            except ValueError:  # reset from another context: still stop routing here
                _current.set(None)
            self._token = None

    def finish(self, state: str, exc: BaseException | None = None, tb: str | None = None) -> None:
        """Flush partial lines, write the `end` record, close the file."""
        with self._lock:
            partial, self._partial = self._partial, {}
            for stream, text in partial.items():  # a last line without its newline
                if text:
                    self._emit_locked(stream, text, None)
        end: dict[str, Any] = {
            "k": spool.END,
            "t": time.time(),
            "state": state,
            "runtime": round(time.monotonic() - self._started, 6),
            "lines": self._seq,
            "errors": self._errors,
        }
        if exc is not None:
            end["exc_type"] = type(exc).__name__
            end["exc_message"] = _safe_str(exc)
            end["traceback"] = tb
        data = spool.encode(end)
        if not self._put(data) and self._spool is not None:
            _hold_end(self._spool.path, data)
        if self._spool is not None:
            try:
                self._spool.close()
            except OSError:
                pass
            self._spool = None

    # -- routing and fallback ----------------------------------------------------------------

    def route_through(self, route: Route | None) -> None:
        """Send Python-level text through `route` (which ends in `write`); None: straight in.

        fd capture puts its ordered path here for the length of its session.
        """
        self.route = self.write if route is None else route

    def order_with(self, gate: Gate | None) -> None:
        """Keep Python-level lines in order with fd-level output `gate` delivers; None: stop."""
        self._gate = gate
        self._open.clear()

    def fallback(self, stream: str) -> TextOut:
        """Where `stream`'s text goes when the spool cannot take it."""
        return self._fallback[stream]

    def set_fallback(self, stream: str, target: TextOut) -> TextOut:
        """Send `stream`'s fallback text to `target`; the target it replaces."""
        previous, self._fallback[stream] = self._fallback[stream], target
        return previous

    # -- output -----------------------------------------------------------------------------

    def write(self, stream: str, text: str) -> None:
        """Python-level text of the task (`print`, `sys.stdout.write`), any piece of a line.

        One record per line, written when its newline comes: a `print` of several arguments,
        which writes each piece, the separators and the newline apart, is one record.
        """
        gate = self._gate
        if gate is not None and stream not in self._open:
            # A new line from Python: what fd capture's pipes hold was written before it.
            if gate.pending or _monotonic_ns() >= gate.next_look:
                gate.take_in()
        partials = self._partial
        lock = self._lock
        lock.acquire()
        try:
            partial = partials.get(stream)
            if text != "\n":
                buf = partial + text if partial else text
                if "\n" in buf or len(buf) > self._max_partial:
                    self._take_locked(stream, buf)
                    if gate is not None and text[-1:] == "\n":
                        self._open.discard(stream)
                        return
                else:
                    partials[stream] = buf  # a piece of a line: kept until its newline
                if gate is not None:
                    self._open.add(stream)
                return
            # print's last write, ending the line its first ones began: `_emit_locked`,
            # inlined, since this runs for every line a task prints.
            if gate is not None:
                self._open.discard(stream)
            partials[stream] = ""
            line = partial or ""
            if len(line) > self._cut_at:  # a str of n characters is at most 4n bytes
                line = self._cut(line)
            self._seq = seq = self._seq + 1
            data = _encode_line(seq, stream, line, None)
            file = self._spool
            if file is not None:
                try:
                    written = _os_write(file.fd, data)
                    if written != len(data):
                        file.write_rest(data, written)
                    return
                except OSError as exc:
                    self._fail("write", exc)
            self._to_fallback(stream, line)
        finally:
            lock.release()

    def feed(self, stream: str, text: str) -> None:
        """Text that comes in order already (fd capture's reader): split into lines as `write`."""
        lock = self._lock
        lock.acquire()
        try:
            self._open.discard(stream)
            partial = self._partial.get(stream)
            self._take_locked(stream, partial + text if partial else text)
        finally:
            lock.release()

    def _take_locked(self, stream: str, buf: str) -> None:
        """`buf` (the stream's partial line and new text): its lines out, the rest kept."""
        if "\n" not in buf:
            # A line without its newline yet; bound it so a progress bar of "\r"s can't
            # grow forever.
            if len(buf) > self._max_partial:
                self._partial[stream] = ""
                self._emit_locked(stream, buf, None)
            else:
                self._partial[stream] = buf
            return
        *lines, self._partial[stream] = buf.split("\n")
        for line in lines:
            self._emit_locked(stream, line, None)

    def emit(self, stream: str, text: str, level: str | None = None) -> None:
        """One whole line (a `logging` record's, a marker), in its own record."""
        with self._lock:
            self._emit_locked(stream, text, level)

    def _emit_locked(self, stream: str, text: str, level: str | None) -> None:
        if len(text) > self._cut_at:  # a str of n characters is at most 4n bytes
            text = self._cut(text)
        self._seq = seq = self._seq + 1
        data = _encode_line(seq, stream, text, level)
        # `_put` inlined: this runs for every line a task prints.
        file = self._spool
        if file is not None:
            try:
                written = _os_write(file.fd, data)
                if written != len(data):
                    file.write_rest(data, written)
                return
            except OSError as exc:
                self._fail("write", exc)
        self._to_fallback(stream, text)

    def _cut(self, text: str) -> str:
        limit = self._config.max_line_bytes
        raw = text.encode("utf-8", "surrogatepass")
        if len(raw) <= limit:
            return text
        kept = raw[:limit].decode("utf-8", "ignore")
        return f"{kept} … [line cut: {len(raw) - limit} more bytes]"

    def progress(self, percent: float | None, message: str | None, state: str | None) -> None:
        record: dict[str, Any] = {"k": spool.PROGRESS, "t": time.time(), "p": percent}
        if message is not None:
            record["msg"] = message
        if state is not None:
            record["state"] = state
        with self._lock:
            self._put(spool.encode(record))

    # -- failure handling -------------------------------------------------------------------

    def _put(self, data: bytes) -> bool:
        if self._spool is None:
            return False
        try:
            self._spool.write(data)
            return True
        except OSError as exc:
            self._fail("write", exc)
            return False

    def _fail(self, what: str, exc: OSError) -> None:
        self._errors += 1
        Stats.spool_errors += 1
        warn_once(
            f"{what}:{exc.errno}",
            f"cannot {what} spool file in {self._config.spool_dir} ({exc.strerror}); "
            "task output goes to the worker's own streams",
        )

    def _to_fallback(self, stream: str, text: str) -> None:
        if self._spool is None:  # never opened; a failed write was counted by _fail
            self._errors += 1
            Stats.spool_errors += 1
        try:
            self._fallback[stream].write(text + "\n")
        except Exception:
            pass


def _hold_end(path: str, data: bytes) -> None:
    """Keep an end record the spool refused: until it is written the collector keeps the file
    and shows the task running (until the worker process exits)."""
    with _pending_lock:
        if len(_pending_ends) < _MAX_PENDING_ENDS:
            _pending_ends.append((path, data))


def _retry_pending_ends() -> None:
    """Append the end records a full spool refused, oldest first, now that there may be room."""
    with _pending_lock:
        kept = []
        for path, data in _pending_ends:
            try:
                file = spool.SpoolFile.reopen(path)
            except OSError:
                continue  # gone: the collector finished it as LOST, or someone removed it
            try:
                file.write(data)
            except OSError:
                kept.append((path, data))
            finally:
                file.close()
        _pending_ends[:] = kept


def _unrouted(stream: TextIO) -> TextOut:
    while isinstance(stream, StreamRouter):
        stream = stream._original
    return stream


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__name__}>"


def host_name() -> str:
    # The same name the collector of this host goes by (its TASKLOG_HOST, else the node name).
    return os.environ.get("TASKLOG_HOST") or os.uname().nodename
