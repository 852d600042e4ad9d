"""Routing of a task's output into its spool file.

`sys.stdout` and `sys.stderr` are replaced once per process by a `StreamRouter`, which sends
each write to the capture of the *current task* (a context variable, so the threads pool's
concurrent tasks never see each other's output) or, outside any task, to the stream that was
there before. Nothing here may raise into a task: a failed spool write is counted and the text
goes to the original stream instead.

The line-level work (pieces of lines in, one spool record per line out) is `Lines`, which
`TaskCapture` extends: ``capture_shim/_speedups.c`` when it was compiled, else its reference in
Python, `capture_shim.lines` (``TASKLOG_SHIM_SPEEDUPS=false`` chooses the latter).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from capture_shim import spool
from capture_shim.config import ShimConfig, speedups_wanted
from capture_shim.lines import Gate, Route
from capture_shim.native import speedups

if TYPE_CHECKING:
    from capture_shim.lines import Lines, RouterBase
else:
    from capture_shim.lines import Lines, RouterBase

    _native = speedups() if speedups_wanted() else None
    if _native is not None:  # else not compiled here, or from other code: the Python classes
        Lines, RouterBase = _native.Lines, _native.RouterBase

__all__ = [
    "SPEEDUPS",
    "CaptureLogHandler",
    "Gate",
    "Route",
    "Stats",
    "StreamRouter",
    "TaskCapture",
    "TextOut",
    "current",
    "ensure_routing",
    "host_name",
    "warn_once",
]

#: Whether the compiled `Lines` is in use (`capture_shim._speedups`).
SPEEDUPS: bool = Lines.__module__ == "capture_shim._speedups"

_current: ContextVar[TaskCapture | None] = ContextVar("tasklog_capture", default=None)
_install_lock = threading.Lock()
#: End records a full spool refused, with their files: retried when the process starts a task.
_pending_ends: list[tuple[str, bytes]] = []
_pending_lock = threading.Lock()
_MAX_PENDING_ENDS = 256


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


class StreamRouter(RouterBase):
    """A stand-in for sys.stdout/sys.stderr that follows the current task (``write`` is
    `RouterBase`'s: the current capture's route, or outside a task the original stream; so is
    every attribute it does not have: the original stream's encoding, isatty, fileno…)."""

    def __init__(self, original: TextIO, stream: str) -> None:
        super().__init__(original, stream, _current)

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


def _call_handlers(self: logging.Logger, record: logging.LogRecord) -> None:
    """`logging.Logger.callHandlers`, and the capture's handler for a record that never gets
    to the root logger's handlers: a logger on its way does not propagate (Celery's
    `get_task_logger` loggers hang below ``celery.task``, which does not)."""
    _original_call_handlers(self, record)
    if _current.get() is None:
        return
    logger: logging.Logger | None = self
    while logger is not None:
        if not logger.propagate:
            if logger is not logging.root and record.levelno >= _log_handler.level:
                _log_handler.handle(record)
            return
        logger = logger.parent


_original_call_handlers = logging.Logger.callHandlers


def ensure_routing() -> None:
    """Put the routers and the log handler in place, again if someone replaced them.

    Celery swaps sys.stdout for its logging proxy and clears the root logger's handlers when a
    worker starts, after an app module (and so `install`) was imported; this runs at each task
    start to follow such changes. Cheap when nothing changed.

    A record of a logger that does not propagate (``celery.task``'s, below which
    `get_task_logger` puts a task's logger, or the application's own) never reaches the root's
    handlers: `logging.Logger.callHandlers` is wrapped to hand it to the capture (once: only
    a record that stopped short of the root).
    """
    if (
        isinstance(sys.stdout, StreamRouter)
        and isinstance(sys.stderr, StreamRouter)
        and _log_handler in logging.root.handlers
        and logging.Logger.callHandlers is _call_handlers
    ):
        return
    with _install_lock:
        if not isinstance(sys.stdout, StreamRouter):
            sys.stdout = StreamRouter(sys.stdout, spool.STDOUT)
        if not isinstance(sys.stderr, StreamRouter):
            sys.stderr = StreamRouter(sys.stderr, spool.STDERR)
        if _log_handler not in logging.root.handlers:
            logging.root.addHandler(_log_handler)
        if logging.Logger.callHandlers is not _call_handlers:
            logging.Logger.callHandlers = _call_handlers  # type: ignore[method-assign]


class TaskCapture(Lines):
    """The output of one task run, on its way to one spool file.

    `Lines` cuts the text into lines and writes their records; this class opens and closes
    the file, writes the start, progress and end records, and decides where a line goes when
    the spool cannot take it (`_unwritten`).
    """

    def __init__(self, config: ShimConfig, task_id: str, start: dict[str, Any]) -> None:
        super().__init__(config.max_line_bytes)
        self.task_id = task_id
        self._config = config
        self._errors = 0
        self._started = time.monotonic()
        self._token: Token[TaskCapture | None] | None = None
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
            self._open_spool(spool.SpoolFile(config.spool_dir, task_id))
        except OSError as exc:
            self._fail("open", exc)
            return
        if not self._put(
            spool.encode({"k": spool.START, "v": spool.VERSION, "t": time.time(), **start})
        ):
            # A file without its start record could never be placed: give it up (unlinking
            # needs no space) and send this task's output to the original streams.
            file = self._close_spool()
            if file is not None:
                with contextlib.suppress(OSError):
                    os.unlink(file.path)

    def _open_spool(self, file: spool.SpoolFile) -> None:
        self._spool = file
        self._fd = file.fd

    def _close_spool(self) -> spool.SpoolFile | None:
        """Stop writing to the spool file and close it; the file, if there was one."""
        file, self._spool = self._spool, None
        self._fd = -1
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()
        return file

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
        self.flush_partials()  # a last line without its newline
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
        self._close_spool()

    def abandon(self) -> None:
        """Flush partial lines and close the file without an end record (see
        `hooks._on_postrun`): the collector finalizes the run once its writer is gone, unless
        the worker's main process appends the end first (`capture_shim.verdict`)."""
        self.flush_partials()
        self._close_spool()

    # -- fallback ---------------------------------------------------------------------------

    def fallback(self, stream: str) -> TextOut:
        """Where `stream`'s text goes when the spool cannot take it."""
        return self._fallback[stream]

    def set_fallback(self, stream: str, target: TextOut) -> TextOut:
        """Send `stream`'s fallback text to `target`; the target it replaces."""
        previous, self._fallback[stream] = self._fallback[stream], target
        return previous

    # -- records other than lines -------------------------------------------------------------

    def progress(self, percent: float | None, message: str | None, state: str | None) -> None:
        record: dict[str, Any] = {"k": spool.PROGRESS, "t": time.time(), "p": percent}
        if message is not None:
            record["msg"] = message
        if state is not None:
            record["state"] = state
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

    def _unwritten(
        self, stream: str, text: str, data: bytes | None, written: int, error: OSError | None
    ) -> None:
        file = self._spool
        if file is not None and data is not None:
            try:
                if error is not None:
                    raise error
                file.write_rest(data, written)  # a full disk took part of it
                return
            except OSError as exc:
                self._fail("write", exc)
        self._to_fallback(stream, text)

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
