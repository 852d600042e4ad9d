"""Values taken from spool records, made storable: text Postgres accepts, numbers in range.

A spool file is written by code the collector does not control (a worker, or anyone who can
write the spool directory); nothing read from it reaches Postgres without passing here.
"""

from __future__ import annotations

import math
import time

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


def when(t: float) -> float:
    """A Unix time clamped to 2000..2100."""
    return min(max(t, EARLIEST), LATEST)


def moment(value: object) -> float:
    """A record's time field: clamped, or now when it has none."""
    return when(number(value) or time.time())
