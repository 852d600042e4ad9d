"""The COPY text the collector builds: escaping and times, without a database."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from collector.copytext import copy_text, iso
from collector.fields import clean_text

_UNESCAPE = {"\\\\": "\\", "\\t": "\t", "\\n": "\n", "\\r": "\r"}


def _fields(data: bytes) -> list[list[str | None]]:
    rows = []
    for line in data.decode("utf-8").split("\n")[:-1]:
        rows.append(
            [
                None if f == "\\N" else re.sub(r"\\[\\tnr]", lambda m: _UNESCAPE[m[0]], f)
                for f in line.split("\t")
            ]
        )
    return rows


@given(st.text(), st.text(min_size=1), st.one_of(st.none(), st.text()))
def test_fields_survive_the_copy_format(message: str, task_id: str, level: str | None) -> None:
    message, task_id = clean_text(message), clean_text(task_id)
    level = None if level is None else clean_text(level)
    rows = [(task_id, 7, "2026-01-02T03:04:05.000006+00:00", "stdout", level, message)]
    assert _fields(copy_text(rows)) == [[task_id, "7", rows[0][2], "stdout", level, message]]


@given(st.floats(min_value=946684800.0, max_value=4102444799.0))
def test_iso_time_is_the_datetime_to_the_microsecond(t: float) -> None:
    shown = datetime.fromisoformat(iso(t))
    assert abs(shown.timestamp() - t) <= 1e-6 + 1e-9 * t
    assert shown.tzinfo is not None and shown.utcoffset() == UTC.utcoffset(None)


def test_iso_time_is_clamped() -> None:
    assert iso(1e12).startswith("2100-01-01T00:00:00.000000")
    assert iso(-5.0).startswith("2000-01-01T00:00:00.000000")
