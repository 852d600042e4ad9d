"""A task's text, cut into lines, one spool record per line: the shim's hot path, in Python.

`Lines` is what `capture.TaskCapture` is built on. ``capture_shim/_speedups.c`` is the same
class in C, used when it was compiled (a C compiler at install time) and
``TASKLOG_SHIM_SPEEDUPS`` is not off; this module is the reference both are tested against
(``tests/unit/test_speedups.py`` feeds both the same writes and compares the records byte for
byte), and what runs anywhere else. Change one, change the other.

The rules, the same in both:

* ``write(stream, text)``, Python-level text (`print`, ``sys.stdout.write``), is any piece of a
  line; a line's record is written when its newline comes, so a `print` of several arguments,
  which writes each piece, the separators and the newline apart, is one record. Text without
  a newline is let go as a line of its own once longer than ``max_line_bytes`` characters.
* ``feed(stream, text)``: text that comes in order already (fd capture's reader), split alike.
* ``emit(stream, text, level)``: one whole line (a `logging` record's, a marker).
* A line longer than ``max_line_bytes`` UTF-8 bytes is cut there, with a marker of how much.
* Order with fd-level output: while a `Gate` is set (`order_with`), before the first piece of a
  new Python-level line the gate is asked to deliver what its pipes hold (`Gate.take_in`) if
  anything may wait: a pipe readable (`Gate.ready`: one ``epoll_wait`` with no timeout), or
  the gate's reader holding output it took out of a pipe and has not delivered yet
  (`gate_pending`, which the reader raises before it reads). So output written at fd level
  before a `print` is recorded before it.
* One ``os.write`` per record on the spool descriptor ``_fd``; what cannot be written that way
  (no spool, a short write, an error) goes to the subclass's ``_unwritten``.

The C class holds the GIL through all of a call but `Gate.take_in` and ``_unwritten``; this one
takes a lock instead.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Protocol

from capture_shim import spool
from tasklog.core.constants import cut_note

__all__ = ["Gate", "Lines", "Route", "RouterBase", "cut"]

_encode_line = spool.encode_line
_escape = json.encoder.encode_basestring
_escape_ascii = json.encoder.encode_basestring_ascii
_time_ns = time.time_ns
_os_write = os.write

#: What Python-level text of a task goes through: (stream, text), ending in `Lines.write`.
Route = Callable[[str, str], None]


class Gate(Protocol):
    """fd-level capture as `Lines` sees it: output that may wait in its pipes.

    Its reader raises the capture's `Lines.gate_pending` before it reads a pipe and lowers it,
    holding the lock `take_in` takes, once what it read is delivered."""

    #: The descriptor of the epoll instance holding the pipes' read ends, -1 without epoll:
    #: the C class waits on it itself (without epoll it polls `read_ends`). Read once, by
    #: `Lines.order_with`.
    probe_fd: int
    #: The pipes' read ends still open.
    read_ends: tuple[int, ...]

    def ready(self) -> object:
        """Whether a pipe is readable now (true: some is): one system call that does not wait."""

    def take_in(self) -> None:
        """Deliver (with `Lines.feed`) whatever the pipes hold now."""


def cut(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes (whole characters), with how much was cut."""
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return text
    kept = raw[:limit].decode("utf-8", "ignore")
    return kept + cut_note(len(raw) - limit)


class Lines:
    """The line state of one task run's output and its spool descriptor (see the module)."""

    def __init__(self, max_line_bytes: int) -> None:
        #: The spool file's descriptor, -1 while there is none.
        self._fd = -1
        #: The last line's sequence number.
        self._seq = 0
        self._max_line_bytes = max_line_bytes
        #: Lines longer than this many characters may be over the byte limit: measured.
        self._cut_at = max_line_bytes // 4
        #: A line without its newline is let go past this many characters.
        self._max_partial = max_line_bytes
        #: Per stream, the text of a line not ended yet.
        self._partial: dict[str, str] = {}
        #: fd capture's side, while it runs (`order_with`), and its `Gate.ready`.
        self._gate: Gate | None = None
        self._gate_ready: Callable[[], object] | None = None
        #: Raised by the gate's reader while it holds output it took out of a pipe, undelivered.
        self.gate_pending = False
        #: Streams whose last Python-level write left a line open, no fd output since: the
        #: rest of that line needs no look at the pipes. Kept only with a gate.
        self._open: set[str] = set()
        #: Where the routers send Python-level text: `write`, or what `route_through` set.
        #: Read it; change it with `route_through`.
        self.route: Route = self.write
        self._lock = threading.Lock()

    # -- what is wired to what ---------------------------------------------------------------

    def route_through(self, route: Route | None) -> None:
        """Send Python-level text through `route` (which ends in `write`); None: straight in."""
        self.route = self.write if route is None else route

    def order_with(self, gate: Gate | None) -> None:
        """Keep Python-level lines in order with fd-level output `gate` delivers; None: stop."""
        self._gate = gate
        self._gate_ready = None if gate is None else gate.ready
        self.gate_pending = False
        self._open.clear()

    # -- text in -------------------------------------------------------------------------------

    def write(self, stream: str, text: str) -> None:
        """Python-level text of the task, any piece of a line."""
        gate = self._gate
        if gate is not None and stream not in self._open:
            # A new line from Python: what the pipes hold was written before it. The pipes
            # first, then the flag (the reader raises it before it takes anything out).
            if self._gate_ready() or self.gate_pending:  # type: ignore[misc]
                gate.take_in()
        partials = self._partial
        lock = self._lock
        lock.acquire()
        try:
            partial = partials.get(stream)
            if text != "\n":
                buf = partial + text if partial else text
                if "\n" in buf or len(buf) > self._max_partial:
                    self._take(stream, buf)
                    if gate is not None and text[-1:] == "\n":
                        self._open.discard(stream)
                        return
                else:
                    partials[stream] = buf  # a piece of a line: kept until its newline
                if gate is not None:
                    self._open.add(stream)
                return
            # print's last write, ending the line its first ones began.
            if gate is not None:
                self._open.discard(stream)
            partials[stream] = ""
            self._emit(stream, partial or "", None)
        finally:
            lock.release()

    def feed(self, stream: str, text: str) -> None:
        """Text that comes in order already (fd capture's reader): split into lines as `write`."""
        with self._lock:
            self._open.discard(stream)
            partial = self._partial.get(stream)
            self._take(stream, partial + text if partial else text)

    def emit(self, stream: str, text: str, level: str | None = None) -> None:
        """One whole line, in its own record."""
        with self._lock:
            self._emit(stream, text, level)

    def flush_partials(self) -> None:
        """Each stream's line not ended yet, as a line of its own (at the task's end)."""
        with self._lock:
            partial, self._partial = self._partial, {}
            for stream, text in partial.items():
                if text:
                    self._emit(stream, text, None)

    # -- inside (lock held) --------------------------------------------------------------------

    def _take(self, stream: str, buf: str) -> None:
        """`buf` (the stream's partial line and new text): its lines out, the rest kept."""
        if "\n" not in buf:
            # A line without its newline yet; bound it so a progress bar of "\r"s can't
            # grow forever.
            if len(buf) > self._max_partial:
                self._partial[stream] = ""
                self._emit(stream, buf, None)
            else:
                self._partial[stream] = buf
            return
        *lines, self._partial[stream] = buf.split("\n")
        for line in lines:
            self._emit(stream, line, None)

    def _emit(self, stream: str, text: str, level: str | None) -> None:
        if len(text) > self._cut_at:  # a str of n characters is at most 4n bytes
            text = cut(text, self._max_line_bytes)
        self._seq = seq = self._seq + 1
        if level is None:  # spool.encode_line, inline: one call less on the hot path
            # ASCII text (most lines) is escaped alike by ensure_ascii's escaper, in half the
            # time, but for DEL, which that one writes as \u007f.
            escaped = (
                _escape_ascii(text) if text.isascii() and "\x7f" not in text else _escape(text)
            )
            data = (
                f'{{"k":"line","n":{seq},"t":{_time_ns() // 1000}e-6,"s":"{stream}","m":'
                f"{escaped}}}\n"
            ).encode("utf-8", "backslashreplace")
        else:
            data = _encode_line(seq, stream, text, level)
        if self._fd >= 0:
            try:
                written = _os_write(self._fd, data)
            except OSError as exc:
                self._unwritten(stream, text, data, 0, exc)
                return
            if written != len(data):
                self._unwritten(stream, text, data, written, None)
            return
        self._unwritten(stream, text, None, 0, None)

    def _unwritten(
        self, stream: str, text: str, data: bytes | None, written: int, error: OSError | None
    ) -> None:
        """A line one `os.write` did not store whole: `data` is its record (None without a
        spool), `written` how much of it the write took, `error` what it raised."""
        raise NotImplementedError


class RouterBase:
    """What `print` calls inside a task: `sys.stdout`/`sys.stderr`'s ``write`` (see capture).

    Text goes to the current capture's route, or, outside any task, to the stream that was
    there before. An attribute the router does not have is the original stream's.
    """

    #: ``write(text)``: a function held by the instance (`_write`), not a method.
    write: Callable[[str], int]

    def __init__(self, original: Any, stream: str, current: ContextVar[Any]) -> None:
        self._original = original
        self._stream = stream
        self.write = _write(original, stream, current.get)

    def __getattr__(self, name: str) -> Any:
        # encoding, errors, isatty, fileno…: whatever the original stream says.
        if name == "_original":  # not set yet (a copy being made): no recursion
            raise AttributeError(name)
        return getattr(self._original, name)


def _write(original: Any, stream: str, current: Callable[[], Any]) -> Callable[[str], int]:
    """A router's ``write``, which each piece a `print` writes goes through: a closure, since
    a method of a class with ``__getattr__`` costs a bound method and a slower lookup of each
    attribute it reads."""

    def write(text: str) -> int:
        cap = current()
        if cap is None:
            written: int = original.write(text)
            return written
        cap.route(stream, text)
        return len(text)

    return write
