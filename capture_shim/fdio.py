"""The descriptor plumbing of fd capture (`capture_shim.fdcapture`): a text stream on a raw
descriptor, writing a whole buffer, flushing C's stdio, sizing a pipe, the epoll probe, the
logging handlers that write to fd 1/2, and the counters of what went wrong.

Standard library only, and nothing here knows of a task: `fdcapture` decides what to do with
the descriptors, this module does it.
"""

from __future__ import annotations

import functools
import logging
import os
import select
import sys
from collections.abc import Callable
from typing import Any

from capture_shim.capture import StreamRouter

#: Bytes a pipe is grown to (Linux, F_SETPIPE_SZ): fewer wake-ups of the reader.
PIPE_SIZE = 1 << 20
#: Whether this system has epoll (else `select.poll`).
EPOLL = hasattr(select, "epoll")


class FdStats:
    """Process-wide counters of fd-level capture."""

    sessions = 0  # tasks captured at fd level
    fallbacks = 0  # tasks left at Python-level capture because fd capture could not start
    detached = 0  # sessions whose pipes a child process still held when the task ended
    errors = 0  # other OS errors while capturing (descriptors are put back regardless)


class FdWriter:
    """A text stream onto a raw descriptor, standing in for one that writes to fd 1/2."""

    def __init__(self, fd: int, like: Any) -> None:
        self._fd = fd
        self.encoding = getattr(like, "encoding", None) or "utf-8"

    def write(self, text: str) -> int:
        write_all(self._fd, text.encode(self.encoding, "backslashreplace"))
        return len(text)

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return os.isatty(self._fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except BlockingIOError:
        pass  # a non-blocking original that is full: drop rather than stall the reader
    except OSError:
        FdStats.errors += 1


def stream_handlers() -> list[logging.StreamHandler[Any]]:
    loggers: list[Any] = [logging.root, *logging.root.manager.loggerDict.values()]
    found: dict[int, logging.StreamHandler[Any]] = {}
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            if isinstance(handler, logging.StreamHandler) and not isinstance(
                handler, logging.FileHandler
            ):
                found[id(handler)] = handler
    return list(found.values())


def std_fileno(stream: Any) -> int | None:
    if stream is None or isinstance(stream, StreamRouter | FdWriter):
        return None
    try:
        fd = stream.fileno()
    except Exception:
        return None
    return fd if fd in (1, 2) else None


_libc_fflush: Callable[[Any], int] | None = None


def flush_stdio() -> None:
    """Flush Python's own stdout/stderr objects and every C stdio stream."""
    global _libc_fflush
    for stream in (sys.__stdout__, sys.__stderr__):
        if stream is not None:
            quiet(stream.flush)
    if _libc_fflush is None:
        try:
            import ctypes

            _libc_fflush = ctypes.CDLL(None).fflush
        except Exception:
            _libc_fflush = lambda _: 0  # noqa: E731 - no C library to flush
    quiet(_libc_fflush, None)


def new_probe() -> tuple[Any, int]:
    """An epoll instance and its descriptor; without epoll a poll object and -1."""
    if EPOLL:
        probe = select.epoll()
        return probe, probe.fileno()
    return select.poll(), -1


def readiness(probe: Any) -> Callable[[], list[Any]]:
    """`probe.poll` with no wait: the descriptors ready now (at most one asked of epoll)."""
    if EPOLL:
        return functools.partial(probe.poll, 0, 1)
    return functools.partial(probe.poll, 0)


def grow_pipe(fd: int) -> None:
    import fcntl

    size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if size is not None:
        quiet(fcntl.fcntl, fd, size, PIPE_SIZE)


def quiet(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:
        pass
