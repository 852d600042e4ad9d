"""The spool record parser: a file's complete records into a chunk's checked values.

Every value kept is checked and made storable here or in `collector.fields`: whatever a spool
file holds, nothing read from it can make Postgres refuse a batch. A bad record is counted
and skipped, with one warning per chunk saying where and why, never what it held (it may be
what a task printed). The format is `capture_shim.spool`'s.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import orjson

from capture_shim import spool
from capture_shim.native import speedups
from collector import fields
from collector.batch import FileChunk, Line, shown

_native = speedups()  # the writer's C extension, when it was compiled from this code
_read_lines = _native.read_lines if _native is not None else None

log = logging.getLogger("tasklog.collector")

#: Highest per-run seq `n` accepted: far beyond any real run (a line a microsecond for 12
#: days), and far below bigint and the 2**53 a browser can hold once a run's base is added.
MAX_RUN_SEQ = 1 << 40
_STREAMS = frozenset({spool.STDOUT, spool.STDERR, spool.LOG})
_NUMBER = (int, float)
#: Records split beyond a batch's room for lines (start, progress and end records).
_SPLIT_SLACK = 16


def read(chunk: FileChunk, data: bytes, end: int, offset: int, max_lines: int) -> int:
    """Parse the whole records of `data[:end]` (read at file offset `offset`) into the chunk
    until it holds `max_lines` lines; returns the bytes used, each record with its newline.

    With the C extension, records of the shim writer's own shape are read by
    `capture_shim._speedups.read_lines` straight into lines, with no dict, no `bytes` per
    record and no check in Python; it stops at any other record, which `parse_record` takes
    before the C reader goes on. It makes the line `parse_records` would make of the same
    record, value for value (`tests/unit/test_records_reader.py`); without it, `parse_records`.
    """
    if _read_lines is None or not FAST_READER:
        return _read_split(chunk, data, end, offset, max_lines)
    lines = chunk.lines
    pos = 0
    while pos < end and len(lines) < max_lines:
        pos, chunk.last_seq = _read_lines(
            lines,
            data,
            pos,
            end,
            chunk.last_seq,
            MAX_RUN_SEQ,
            chunk.max_line_bytes,
            fields.LEVEL_BYTES,
            max_lines,
            Line,
        )
        if pos >= end or len(lines) >= max_lines:
            break
        record_end = data.index(b"\n", pos, end)
        parse_record(chunk, data[pos:record_end], offset + pos)
        pos = record_end + 1
    return pos


#: Whether `read` uses the C reader when there is one (tests turn it off to compare).
FAST_READER = True


def _read_split(chunk: FileChunk, data: bytes, end: int, offset: int, max_lines: int) -> int:
    """`read` in Python: records split out of `data` and parsed by `parse_records`."""
    pos = 0
    while pos < end and len(chunk.lines) < max_lines:
        # Split only about as many records as the batch has room for: a read holds up to
        # 8 MB, and making a bytes object of each record costs as much as parsing a tenth.
        room = max_lines - len(chunk.lines) + _SPLIT_SLACK
        records = (data if pos == 0 else data[pos:]).split(b"\n", room)
        # The last piece is what follows the records split: the unsplit rest, or the
        # bytes after the last newline (a record still being written, or nothing).
        rest = len(records) > room
        records.pop()
        used, full = parse_records(chunk, records, offset + pos, max_lines)
        pos += used
        if full or not rest:
            break
    return min(pos, end)


def parse_records(
    chunk: FileChunk, records: list[bytes], offset: int, max_lines: int
) -> tuple[int, bool]:
    """Parse records into the chunk until it holds `max_lines` lines; returns the bytes used
    (each record with its newline) and whether the chunk is full.

    The common record, a well-formed line of ASCII text, is checked inline: the same checks as
    `parse_record`, without a call, an exception frame and a class instance per line. Anything
    else (other kinds, text to clean or cut, a value out of range, a record orjson refuses)
    goes to `parse_record`, which decides exactly as before.
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
        if parse_record(chunk, raw, offset + start):
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


def parse_record(chunk: FileChunk, raw: bytes, offset: int = 0) -> bool:
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


def _loads(raw: bytes) -> Any:
    # orjson reads a record in a tenth of the time; what it refuses (a lone surrogate escape,
    # NaN, a huge int) goes to the standard library, so a record means what it always meant.
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)
