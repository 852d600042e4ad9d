"""The spool format, version 1: how a worker hands a task's output to the collector.

One file per task run in the spool directory, named ``<safe id>.<pid>.<ns>.jsonl``. The safe
id is the task id itself when it is short and made of ``[A-Za-z0-9_.-]`` (not starting with a
dot), otherwise ``h-`` and the first 32 hex digits of its SHA-256: a task id is a
user-controlled string and must never choose a path. The real id is in the ``start`` record.
`FILE_NAME` is that grammar; a reader parses a name with `parse_file_name`, never by hand.

Each line of a file is one JSON object terminated by ``\\n``, written whole by a single
``os.write`` on an ``O_APPEND`` descriptor, so a reader sees whole records or a trailing partial
line (which it must leave for later; a record torn by a full disk is truncated away). ``k`` is
the record kind, ``t`` a Unix time in seconds (a JSON number; ``line`` records write it as
integer microseconds with an exponent, ``1764551234123456e-6``):

``start`` (first record of a file)
    ``v`` format version (1), ``task_id`` (see `task_id_problem`: a task whose id is empty, holds
    NUL, is not valid Unicode or is longer than ``MAX_TASK_ID_BYTES`` is not spooled), ``name``,
    ``host``, ``pid``, ``worker``, ``parent_id``, ``root_id`` (null when not a task id the
    spool could carry), ``retries``, ``max_lines``
    (head+tail bound the collector applies), ``args``/``kwargs`` (only when
    ``TASKLOG_RECORD_ARGS`` is on), ``ppid`` (only in a prefork pool child: its worker's main
    process, which may append the run's end when the child is killed, `capture_shim.verdict`).
``line``
    ``n`` per-run sequence number 1, 2, 3…, ``s`` stream (``stdout``, ``stderr``, ``log``),
    ``m`` the text without its newline, ``l`` the level name for ``log`` lines (any text: a
    custom logging level may be named anything).
``progress``
    ``p`` percent 0-100 or null, ``msg`` optional text, ``state`` optional Celery state.
``end`` (last record of a file; written by the run's process, or by its worker's main process
when the run was killed: `capture_shim.verdict`)
    ``state`` (``SUCCESS``, ``FAILURE``, ``RETRY``, ``REVOKED``, ``IGNORED``, ``REJECTED``:
    names of `tasklog.core.constants`), ``runtime`` seconds,
    ``exc_type``, ``exc_message``, ``traceback``, ``lines`` (lines written), ``errors``
    (records that could not be written to the spool and went to the original stream). When
    a full disk refuses it, the same process appends it before its next task starts.

A reader ignores keys it does not know, counts and skips a line that is not a valid record,
and never ingests a trailing line without its newline.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from typing import NamedTuple

from tasklog.core.constants import (
    LOG,
    MARKER,
    MAX_TASK_ID_BYTES,
    STDERR,
    STDOUT,
    task_id_problem,
)

__all__ = [
    "END",
    "FILE_NAME",
    "LINE",
    "LOG",
    "MARKER",
    "MAX_TASK_ID_BYTES",
    "PROGRESS",
    "START",
    "STDERR",
    "STDOUT",
    "SUFFIX",
    "VERSION",
    "FileName",
    "SpoolFile",
    "encode",
    "encode_line",
    "file_name",
    "parse_file_name",
    "safe_name",
    "task_id_problem",
]

VERSION = 1
SUFFIX = ".jsonl"

START = "start"
LINE = "line"
PROGRESS = "progress"
END = "end"

# The streams (STDOUT, STDERR, LOG, MARKER) and the task-id limit (MAX_TASK_ID_BYTES,
# `task_id_problem`) are shared with every component: `tasklog.core.constants` holds them.

_SAFE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
#: The grammar of a spool file's name: ``<safe id>.<pid>.<ns>.jsonl``.
FILE_NAME = re.compile(
    r"(?P<stem>[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}|h-[0-9a-f]{32})"
    r"\.(?P<pid>[0-9]{1,10})\.(?P<ns>[0-9]{1,20})" + re.escape(SUFFIX)
)
_dumps = json.JSONEncoder(ensure_ascii=False, default=repr, separators=(",", ":")).encode
_str = json.encoder.encode_basestring
_time_ns = time.time_ns


def safe_name(task_id: str) -> str:
    """The file-name stem for a task id: the id itself if harmless, else a hash of it."""
    if _SAFE_ID.fullmatch(task_id):
        return task_id
    return "h-" + hashlib.sha256(task_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def file_name(task_id: str, pid: int, ns: int) -> str:
    return f"{safe_name(task_id)}.{pid}.{ns}{SUFFIX}"


class FileName(NamedTuple):
    """A spool file's name, read back: the safe id, the writer's pid, its start in ns."""

    stem: str
    pid: int
    ns: int


def parse_file_name(name: str) -> FileName | None:
    """The parts of a spool file's name, or None when it is not one (`file_name` writes it)."""
    match = FILE_NAME.fullmatch(name)
    if match is None:
        return None
    return FileName(match["stem"], int(match["pid"]), int(match["ns"]))


def encode(record: dict[str, object]) -> bytes:
    """One record as a JSON line; text that is not valid Unicode is shown escaped, not lost."""
    return (_dumps(record) + "\n").encode("utf-8", "backslashreplace")


def encode_line(seq: int, stream: str, text: str, level: str | None = None) -> bytes:
    # The hot path: one formatted string instead of building and dumping a dict. The time is
    # written as integer microseconds with an exponent (``1764551234123456e-6``, a JSON number
    # like any other): no float formatting, no cutting of digits.
    if level is None:
        return (
            f'{{"k":"line","n":{seq},"t":{_time_ns() // 1000}e-6,"s":"{stream}",'
            f'"m":{_str(text)}}}\n'
        ).encode("utf-8", "backslashreplace")
    # The level name is text like any other: a custom level may be named anything.
    return (
        f'{{"k":"line","n":{seq},"t":{_time_ns() // 1000}e-6,"s":"{stream}",'
        f'"l":{_str(level)},"m":{_str(text)}}}\n'
    ).encode("utf-8", "backslashreplace")


class SpoolFile:
    """An append-only spool file for one task run. Raises OSError; the caller decides."""

    __slots__ = ("fd", "path")

    def __init__(self, directory: str, task_id: str) -> None:
        self.path = os.path.join(directory, file_name(task_id, os.getpid(), time.time_ns()))
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        self.fd = os.open(self.path, flags, 0o640)

    @classmethod
    def reopen(cls, path: str) -> SpoolFile:
        """An existing spool file, to append a record that a full disk refused earlier."""
        self = cls.__new__(cls)
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))
        return self

    def write(self, data: bytes) -> None:
        # O_APPEND + one write per record: a reader sees whole records or a partial tail.
        written = os.write(self.fd, data)
        if written != len(data):
            self.write_rest(data, written)

    def write_rest(self, data: bytes, written: int) -> None:
        """Finish a record the first `os.write` took only `written` bytes of, or fail loudly.

        Only on a full disk. The torn record is taken back (truncating needs no space): left
        there, it would swallow the next record written once space frees. One writer per file.
        """
        view = memoryview(data)[written:]
        try:
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
        except OSError:
            try:
                os.ftruncate(self.fd, os.fstat(self.fd).st_size - (len(data) - len(view)))
            except OSError:
                pass
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
