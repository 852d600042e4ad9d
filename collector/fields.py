"""Values taken from spool records, made storable: text Postgres accepts, numbers in range.

A spool file is written by code the collector does not control (a worker, or anyone who can
write the spool directory); nothing read from it reaches Postgres without passing here.
"""

from __future__ import annotations

import math
import time

from capture_shim import spool
from tasklog.core import constants

#: Record times outside 2000..2100 are clock errors (or garbage); they are clamped.
EARLIEST = 946684800.0
LATEST = 4102444800.0


def clean_text(text: str) -> str:
    """Make text storable in Postgres: NUL and lone surrogates become visible escapes."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if not text.isascii():  # ASCII holds no surrogate: skip the trial encoding
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def text(value: object) -> str | None:
    """A record's optional text field, storable; anything but a string is absent."""
    return clean_text(value) if isinstance(value, str) else None


def number(value: object) -> float | None:
    """A finite number of sane size, or None (NaN, infinities, bools, huge values)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        result = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return result if math.isfinite(result) and abs(result) < 1e15 else None


def percent(value: object) -> float | None:
    result = number(value)
    return None if result is None else min(max(result, 0.0), 100.0)


def clamped_time(t: float) -> float:
    """A Unix time clamped to 2000..2100."""
    return min(max(t, EARLIEST), LATEST)


def record_time(value: object) -> float:
    """A record's time field: clamped, or now when it has none."""
    return clamped_time(number(value) or time.time())


#: Level names are short ("WARNING", a custom "AUDIT"); a longer one is cut.
LEVEL_BYTES = 64
#: Names and ids that Postgres indexes (task name, host, root id...): a btree entry holds at
#: most ~2700 bytes, and the spool's own task-id bound is this.
KEY_BYTES = spool.MAX_TASK_ID_BYTES
#: Task states: Celery's are short; the column is compared and indexed, a longer one is cut.
STATE_CHARS = constants.STATE_CHARS
#: Free text of a record (exception message, traceback, progress message).
TEXT_BYTES = 1 << 20
#: Counts from a record (e.g. `errors`) are clamped to this.
MAX_COUNT = (1 << 31) - 1
#: Nesting kept in task args; deeper values are replaced by a note.
_ARGS_DEPTH = 32


def cut(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes, on a character boundary (text is clean)."""
    if len(text) <= limit // 4:
        return text
    raw = text.encode("utf-8")
    return text if len(raw) <= limit else raw[:limit].decode("utf-8", "ignore")


def cut_line(message: str, limit: int) -> str:
    """A line over TASKLOG_MAX_LINE_BYTES, cut as the shim cuts it (the shim's own cut line,
    `limit` bytes and its note, is left as it is)."""
    raw = message.encode("utf-8")
    if len(raw) <= limit + _CUT_NOTE_BYTES:
        return message
    kept = raw[:limit].decode("utf-8", "ignore")
    return kept + constants.cut_note(len(raw) - limit)


#: Room for the note the shim appends to a line it cut (`constants.CUT_NOTE`).
_CUT_NOTE_BYTES = 48


def short_text(value: object, limit: int) -> str | None:
    """An optional text field, storable and at most `limit` UTF-8 bytes."""
    return cut(clean_text(value), limit) if isinstance(value, str) else None


def count(value: object) -> int:
    """A count from a record, clamped to 0..MAX_COUNT; 0 when it is not a number.

    A huge integer may arrive as a float (orjson reads integers past 64 bits so).
    """
    if type(value) is int:
        return min(max(value, 0), MAX_COUNT)
    if type(value) is float and math.isfinite(value):
        return int(min(max(value, 0.0), MAX_COUNT))
    return 0


def json_value(value: object, depth: int = 0) -> object:
    """A decoded JSON value jsonb accepts: NaN and infinities as text (jsonb has neither),
    text storable, nesting bounded."""
    if isinstance(value, str):
        return clean_text(value)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if depth >= _ARGS_DEPTH:
        return "… (nested too deep)"
    if isinstance(value, list):
        return [json_value(item, depth + 1) for item in value]
    if isinstance(value, dict):
        return {clean_text(str(k)): json_value(v, depth + 1) for k, v in value.items()}
    return clean_text(repr(value))
