"""The binary COPY data the collector builds: fields and times, read back without a database."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.batch import Line
from collector.copydata import HEADER, TRAILER, Rows, copy_data, copy_data_py, iso, micros
from collector.fields import clean_text

try:
    from capture_shim import _speedups
except ImportError:  # pragma: no cover - built without a C compiler
    _speedups = None

_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def _rows(data: bytes) -> list[list[bytes | None]]:
    """Binary COPY data read as Postgres reads it: field count, then length and bytes each."""
    assert data.startswith(HEADER) and data.endswith(TRAILER)
    pos, end, rows = len(HEADER), len(data) - len(TRAILER), []
    while pos < end:
        (count,), pos = struct.unpack_from(">h", data, pos), pos + 2
        row: list[bytes | None] = []
        for _ in range(count):
            (size,), pos = struct.unpack_from(">i", data, pos), pos + 4
            row.append(None if size == -1 else data[pos : pos + size])
            pos += max(size, 0)
        rows.append(row)
    assert pos == end
    return rows


def _time(field: bytes | None) -> datetime:
    assert field is not None and len(field) == 8
    return _PG_EPOCH + timedelta(microseconds=int.from_bytes(field, "big", signed=True))


@given(
    st.text(),
    st.text(min_size=1),
    st.one_of(st.none(), st.text()),
    st.integers(min_value=0, max_value=2**61),
)
def test_fields_survive_the_copy_format(
    message: str, task_id: str, level: str | None, base: int
) -> None:
    message, task_id = clean_text(message), clean_text(task_id)
    level = None if level is None else clean_text(level)
    lines = [
        Line(1, 1_800_000_000.25, "stdout", level, message),
        Line(2, 1_800_000_001.5, "stderr", None, message),
        Line(7, 1_800_000_002.0, "stderr", level, "x"),
    ]
    data = HEADER + copy_data([Rows(task_id, base, lines), Rows("other", 5, lines[:1])]) + TRAILER
    expected = [(task_id, base + line.seq, line) for line in lines] + [("other", 6, lines[0])]
    rows = _rows(data)
    assert len(rows) == len(expected)
    for (task, seq, ts, stream, level_field, text), (task_id_, seq_, line) in zip(
        rows, expected, strict=True
    ):
        assert task is not None and task.decode() == task_id_
        assert seq is not None and int.from_bytes(seq, "big", signed=True) == seq_
        assert _time(ts) == datetime.fromisoformat(iso(line.t))
        assert stream is not None and stream.decode() == line.stream
        assert (level_field if level_field is None else level_field.decode()) == line.level
        assert text is not None and text.decode() == line.message


@given(st.floats(allow_nan=False))
def test_the_stored_time_is_the_published_one(t: float) -> None:
    data = HEADER + copy_data([Rows("t", 0, [Line(1, t, "stderr", None, "x")])]) + TRAILER
    (row,) = _rows(data)
    stored = _time(row[2])
    assert stored == datetime.fromisoformat(iso(t))
    assert (stored - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) == micros(t)


@given(st.floats(min_value=946684800.0, max_value=4102444799.0))
def test_iso_time_is_the_datetime_to_the_microsecond(t: float) -> None:
    shown = datetime.fromisoformat(iso(t))
    assert abs(shown.timestamp() - t) <= 1e-6 + 1e-9 * t
    assert shown.tzinfo is not None and shown.utcoffset() == UTC.utcoffset(None)


def test_iso_time_is_clamped() -> None:
    assert iso(1e12).startswith("2100-01-01T00:00:00.000000")
    assert iso(-5.0).startswith("2000-01-01T00:00:00.000000")


_lines = st.lists(
    st.builds(
        Line,
        st.integers(min_value=0, max_value=1 << 40),
        st.one_of(st.floats(allow_nan=False), st.floats(1.7e9, 1.9e9)),
        st.sampled_from(["stdout", "stderr", "log", "é"]),
        st.one_of(st.none(), st.text(max_size=8)),
        st.one_of(st.text(max_size=40), st.text(alphabet=st.sampled_from("a\x00é\ud800€"))),
    ),
    max_size=8,
)


@pytest.mark.skipif(_speedups is None, reason="capture_shim._speedups was not compiled")
@given(
    st.lists(st.tuples(st.text(min_size=1, max_size=20), st.integers(0, 2**61), _lines), max_size=4)
)
def test_the_c_rows_are_the_python_rows_byte_for_byte(
    pieces: list[tuple[str, int, list[Line]]],
) -> None:
    """`copy_data` (the C extension's `copy_rows`) writes what `copy_data_py` writes, and
    refuses what it refuses (text with a lone surrogate: UnicodeEncodeError)."""
    rows = [Rows(*piece) for piece in pieces]
    try:
        expected: bytes | type[Exception] = copy_data_py(rows)
    except UnicodeEncodeError:
        expected = UnicodeEncodeError
    if expected is UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            copy_data(rows)
    else:
        assert copy_data(rows) == expected
