"""Rows of `lines` in COPY text format, and line times as the ISO text both COPY and the live
path carry.

Building the text here, in one buffer per slice, costs a fraction of psycopg's `write_row` per
line; the escaping is the four characters COPY gives meaning to (text is already clean).
"""

from __future__ import annotations

from datetime import UTC, datetime

from collector.fields import EARLIEST, LATEST, when

#: task_id, seq, ts, stream, level, message: the columns of the `copy_lines` statement.
Row = tuple[str, int, str, str, str | None, str]

#: "YYYY-MM-DDTHH:MM:SS" of recent whole seconds: a batch's lines share a few of them.
_seconds: dict[str, str] = {}


def iso(t: float) -> str:
    """A line's time as ISO 8601 UTC with microseconds, for COPY and for the live path alike.

    Built from a cached second and the microseconds: a datetime per line cost more than
    everything else in a batch but the parsing.
    """
    if not EARLIEST <= t <= LATEST:
        t = when(t)
    # Cut as text: formatting an int with "06d" costs twice the rest.
    micros = str(int(t * 1_000_000 + 0.5))  # 15 digits from 2000 to 2100
    prefix = _seconds.get(micros[:-6])
    if prefix is None:
        if len(_seconds) >= 4096:
            _seconds.clear()
        prefix = _seconds[micros[:-6]] = datetime.fromtimestamp(int(micros[:-6]), UTC).strftime(
            "%Y-%m-%dT%H:%M:%S"
        )
    return f"{prefix}.{micros[-6:]}+00:00"


def copy_text(rows: list[Row]) -> bytes:
    """Rows in COPY text format, one buffer: one write instead of a `write_row` per line."""
    null = "\\N"
    return "".join(
        [
            f"{_escape(task_id)}\t{seq}\t{ts}\t{stream}\t"
            f"{null if level is None else _escape(level)}\t{_escape(message)}\n"
            for task_id, seq, ts, stream, level, message in rows
        ]
    ).encode("utf-8")


def _escape(text: str) -> str:
    # Text is clean (no NUL, no lone surrogate); COPY gives meaning to these four.
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        return (
            text.replace("\\", "\\\\")
            .replace("\t", "\\t")
            .replace("\n", "\\n")
            .replace("\r", "\\r")
        )
    return text
