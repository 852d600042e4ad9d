"""The stored lines as COPY data in Postgres's binary format, and line times as the ISO text
the live path carries.

Binary rows cost both sides less than text: Postgres takes the seq and the time as the 8 bytes
it stores instead of parsing digits and a timestamp, and this process packs two integers
instead of formatting an ISO time and escaping text. The rows are made straight from the
parsed lines (`collector.batch.Line`), one buffer per slice, with no tuple per row between:
one write instead of a `write_row` per line. Text is clean already (valid UTF-8, no NUL:
`collector.fields`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime
from struct import Struct
from typing import NamedTuple

from capture_shim.native import speedups
from collector.batch import Line
from collector.fields import EARLIEST, LATEST, clamped_time

_native = speedups()  # the shim's C extension, when it was compiled from this code
_copy_rows = _native.copy_rows if _native is not None else None

#: What binary COPY data starts with: the signature, no flags, no header extension.
HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
#: What it ends with: a row of -1 fields.
TRAILER = b"\xff\xff"
#: 2000-01-01 00:00 UTC, where Postgres counts timestamps from, in Unix microseconds.
_PG_EPOCH_US = 946_684_800_000_000
_NULL = b"\xff\xff\xff\xff"
#: A row's fields: task_id, seq, ts, stream, level, message (the columns of `copy_lines`).
_FIELDS = 6

#: "YYYY-MM-DDTHH:MM:SS" of recent whole seconds: a batch's lines share a few of them.
_seconds: dict[str, str] = {}


class Rows(NamedTuple):
    """Lines of one task stored at consecutive seqs: the line numbered n at `base + n`."""

    task_id: str
    base: int
    lines: list[Line]


def micros(t: float) -> int:
    """A line's time in Unix microseconds, clamped to 2000..2100 (`fields.clamped_time`): the time
    stored, and the one `iso` shows."""
    if not EARLIEST <= t <= LATEST:
        t = clamped_time(t)
    return int(t * 1_000_000 + 0.5)


def iso(t: float) -> str:
    """A line's time as ISO 8601 UTC with microseconds, as the live path publishes it.

    Built from a cached second and the microseconds: a datetime per line costs more.
    """
    # Cut as text: formatting an int with "06d" costs twice the rest.
    digits = str(micros(t))  # 15 digits from 2000 to 2100
    prefix = _seconds.get(digits[:-6])
    if prefix is None:
        if len(_seconds) >= 4096:
            _seconds.clear()
        prefix = _seconds[digits[:-6]] = datetime.fromtimestamp(int(digits[:-6]), UTC).strftime(
            "%Y-%m-%dT%H:%M:%S"
        )
    return f"{prefix}.{digits[-6:]}+00:00"


#: Whether `copy_data` uses the C extension's `copy_rows` when there is one (tests compare).
FAST_ROWS = True


def copy_data(pieces: list[Rows]) -> bytes:
    """The lines as binary COPY rows (without `HEADER` and `TRAILER`), in one buffer:
    `capture_shim._speedups.copy_rows` when it was compiled, byte for byte `copy_data_py`
    (`tests/unit/test_copy_data.py` compares the two), with no bytes object per field."""
    if _copy_rows is not None and FAST_ROWS:
        rows: bytes = _copy_rows(pieces, _PG_EPOCH_US, EARLIEST, LATEST)
        return rows
    return copy_data_py(pieces)


def copy_data_py(pieces: list[Rows]) -> bytes:
    """The lines as binary COPY rows (without `HEADER` and `TRAILER`), in one buffer.

    A row is its field count, then each field as its length and its bytes (-1: NULL): text as
    UTF-8, the seq as a big-endian int8, the time as int8 microseconds since 2000-01-01 UTC.
    Raises UnicodeEncodeError for text that is not storable (the caller's refusal path).
    """
    out: list[bytes] = []
    for task_id, base, lines in pieces:
        task = task_id.encode()
        # Field count, the task id and the seq's length: the same for every row of the task.
        start = _FIELDS.to_bytes(2, "big") + _field(task) + (8).to_bytes(4, "big")
        stream = level = None
        for n, t, line_stream, line_level, message in lines:
            if line_stream != stream or line_level != level:
                stream, level = line_stream, line_level
                pack, middle = _packer(stream, level)
            if not EARLIEST <= t <= LATEST:  # `micros`, inline: this runs for every line
                t = clamped_time(t)
            ts = int(t * 1_000_000 + 0.5) - _PG_EPOCH_US
            text = message.encode()
            out += (start, pack(base + n, 8, ts, middle, len(text)), text)
    return b"".join(out)


@functools.lru_cache(maxsize=256)  # level names are whatever a spool file holds: bounded
def _packer(stream: str, level: str | None) -> tuple[Callable[..., bytes], bytes]:
    """What packs a row's seq, time's length, time, stream, level and message length, and the
    stream and level fields it puts in the middle (the same for many rows)."""
    middle = _field(stream.encode()) + (_NULL if level is None else _field(level.encode()))
    return Struct(f">qiq{len(middle)}si").pack, middle


def _field(value: bytes) -> bytes:
    return len(value).to_bytes(4, "big") + value
