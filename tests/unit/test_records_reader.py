"""The collector's C record reader (`capture_shim._speedups.read_lines`, used by
`collector.records.read`) against the Python reader: the same lines, the same refusals, the
same bytes used, record by record, whatever a spool file holds."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capture_shim import spool
from collector import records
from collector.batch import FileChunk, FileState, Line

try:
    from capture_shim import _speedups
except ImportError:  # pragma: no cover - built without a C compiler
    _speedups = None

pytestmark = pytest.mark.skipif(
    _speedups is None,
    reason="capture_shim._speedups was not compiled (no C compiler at install)",
)

NAME = "task-1.4242.1000.jsonl"


@contextmanager
def _python_reader() -> Iterator[None]:
    records.FAST_READER = False
    try:
        yield
    finally:
        records.FAST_READER = True


def _read(data: bytes, max_lines: int, line_bytes: int, fast: bool) -> tuple[FileChunk, int]:
    chunk = FileChunk(state=FileState(name=NAME, inode=1), end_offset=0, max_line_bytes=line_bytes)
    end = data.rfind(b"\n") + 1
    if fast:
        used = records.read(chunk, data, end, 0, max_lines)
    else:
        with _python_reader():
            used = records.read(chunk, data, end, 0, max_lines)
    return chunk, used


def _same(data: bytes, max_lines: int = 10_000, line_bytes: int = 16384) -> list[Line]:
    fast, fast_used = _read(data, max_lines, line_bytes, fast=True)
    slow, slow_used = _read(data, max_lines, line_bytes, fast=False)
    assert fast_used == slow_used
    assert fast.lines == slow.lines
    for a, b in zip(fast.lines, slow.lines, strict=True):
        assert [type(value) for value in a] == [type(value) for value in b]
        assert type(a) is Line
    assert (fast.corrupt, fast.last_seq, fast.forged) == (slow.corrupt, slow.last_seq, slow.forged)
    assert (fast.start, fast.progress, fast.end) == (slow.start, slow.progress, slow.end)
    return fast.lines


_texts = st.one_of(
    st.text(max_size=60),
    st.text(alphabet=st.sampled_from('ab "\\/\x00\x01\x1b\x7f\t\n\r\b\fé€\ud800'), max_size=30),
    st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=60),
)


def _mutate(record: bytes, draw: st.DrawFn) -> bytes:
    """A line record changed the way a broken or hostile writer might change it."""
    how = draw(st.integers(0, 9))
    if how == 0:  # the seq as any number-like text
        digits = draw(st.sampled_from([b"0", b"01", b"-1", b"1.0", b"1e3", b"9" * 19, b"1" * 14]))
        return re.sub(rb'"n":[0-9]+', lambda _: b'"n":' + digits, record, count=1)
    if how == 1:  # the time as any digits
        digits = draw(st.from_regex(rb"\A[0-9]{1,20}\Z")).strip()
        suffix = draw(st.sampled_from([b"e-6", b"e-5", b"", b".5e-6", b"E-6"]))
        return re.sub(rb'"t":[0-9]+e-6', lambda _: b'"t":' + digits + suffix, record, count=1)
    if how == 2:  # a \u escape of any code point, any case
        code = draw(st.integers(0, 0xFFFF))
        escape = draw(st.sampled_from([f"\\u{code:04x}", f"\\u{code:04X}", f"\\u{code:03x}"]))
        return record.replace(b'"m":"', b'"m":"' + escape.encode(), 1)
    if how == 3:  # another stream
        stream = draw(st.sampled_from([b"stdin", b"stdouts", b"log\\u0000", b"", b"LOG"]))
        return re.sub(rb'"s":"[a-z]+"', lambda _: b'"s":"' + stream + b'"', record, count=1)
    if how == 4:  # cut anywhere
        return record[: draw(st.integers(0, max(len(record) - 2, 0)))] + b"\n"
    if how == 5:  # a byte changed anywhere
        at = draw(st.integers(0, max(len(record) - 2, 0)))
        byte = draw(st.sampled_from([b" ", b"\x00", b"\xff", b'"', b"\\", b"}", b"\r"]))
        return record[:at] + byte + record[at + 1 :]
    if how == 6:  # a key more
        return record[:-2] + b',"x":1}\n'
    if how == 7:  # a level of any text
        text = json.dumps(draw(_texts), ensure_ascii=draw(st.booleans()))
        level = text.encode("utf-8", "backslashreplace")
        return record.replace(b'"m":', b'"l":' + level + b',"m":', 1)
    if how == 8:  # an escape JSON does not know
        bad = draw(st.sampled_from([b"\\x41", b"\\a", b"\\", b"\\u", b"\\u12", b"\\'"]))
        return record.replace(b'"m":"', b'"m":"' + bad, 1)
    return record


@st.composite
def _spool_records(draw: st.DrawFn) -> bytes:
    """A file's records: well-formed lines of both writers, mutated ones, other kinds."""
    out = []
    if draw(st.booleans()):
        task = draw(st.sampled_from(["task-1", "task-2"]))  # task-2: a forged file
        out.append(
            spool.encode({"k": spool.START, "v": spool.VERSION, "t": 1.7e9, "task_id": task})
        )
    seq = draw(st.integers(0, 3))
    for _ in range(draw(st.integers(0, 25))):
        kind = draw(st.integers(0, 9))
        seq += draw(st.sampled_from([1, 1, 1, 2, 0, -1, 1 << 40]))
        if kind <= 5:
            level = draw(
                st.one_of(st.none(), st.sampled_from(["INFO", "x" * 64, "x" * 65]), _texts)
            )
            stream = draw(st.sampled_from([spool.STDOUT, spool.STDERR, spool.LOG]))
            record = spool.encode_line(max(seq, 0), stream, draw(_texts), level)
            if kind >= 3:
                record = _mutate(record, draw)
        elif kind == 6:
            record = spool.encode({"k": spool.PROGRESS, "p": draw(st.integers(0, 100))})
        elif kind == 7:
            record = spool.encode({"k": spool.END, "state": "SUCCESS", "t": 1.7e9})
        elif kind == 8:
            record = draw(st.sampled_from([b"\n", b"{}\n", b"[1]\n", b"\xff\n", b"null\n"]))
        else:
            record = spool.encode_line(max(seq, 0), spool.STDOUT, "x" * draw(st.integers(0, 50)))
        out.append(record)
    return b"".join(out) + draw(st.sampled_from([b"", b'{"k":"line","n":']))


@settings(max_examples=400, deadline=None)
@given(
    _spool_records(),
    st.integers(min_value=1, max_value=30),
    st.sampled_from([1, 8, 40, 16384]),
)
def test_the_c_reader_decides_every_record_as_the_python_reader(
    data: bytes, max_lines: int, line_bytes: int
) -> None:
    _same(data, max_lines, line_bytes)


@given(st.lists(_texts, max_size=20))
def test_lines_the_shim_writes_are_read_back_as_written(texts: list[str]) -> None:
    data = b"".join(spool.encode_line(n, spool.STDOUT, t) for n, t in enumerate(texts, 1))
    lines = _same(data)
    assert len(lines) == len(texts)


@given(st.integers(min_value=0, max_value=(1 << 53) - 1))
def test_a_line_time_is_the_float_a_json_parser_reads(micros: int) -> None:
    record = f'{{"k":"line","n":1,"t":{micros}e-6,"s":"stdout","m":"x"}}\n'.encode()
    (line,) = _same(record)
    assert line.t == json.loads(f"{micros}e-6") == orjson.loads(f"{micros}e-6")


def test_the_common_records_are_read_by_the_c_reader() -> None:
    """Not a fallback in disguise: the writer's records never reach the Python parser."""
    data = b"".join(
        [
            spool.encode_line(1, spool.STDOUT, 'plain "quoted" \\ tab\t esc\x1b[0m'),
            spool.encode_line(2, spool.LOG, "a log line", "WARNING"),
            spool.encode_line(3, spool.STDERR, ""),
        ]
    )
    chunk = FileChunk(state=FileState(name=NAME, inode=1), end_offset=0)
    assert _speedups is not None
    pos, last = _speedups.read_lines(
        chunk.lines, data, 0, len(data), 0, records.MAX_RUN_SEQ, 16384, 64, 100, Line
    )
    assert (pos, last) == (len(data), 3)
    assert [line.message for line in chunk.lines] == [
        'plain "quoted" \\ tab\t esc\x1b[0m',
        "a log line",
        "",
    ]
    assert chunk.lines[1].level == "WARNING"


@pytest.mark.parametrize(
    "record",
    [
        rb'{"k":"line","n":1,"t":1e-6,"s":"stdout","m":"nul \u0000 here"}',
        rb'{"k":"line","n":1,"t":1e-6,"s":"stdout","m":"not ascii \u0080"}',
        rb'{"k":"line","n":1,"t":1e-6,"s":"stdout","m":"escape \u001B[0m \/"}',
        b'{"k":"line","n":1,"t":1e-6,"s":"stdout","m":"raw \xc3\xa9"}',
        b'{"k":"line","n":1,"t":1e-6,"s":"stdout","m":"raw tab \t"}',
        rb'{"k":"line","n":1,"t":0123e-6,"s":"stdout","m":"x"}',
        rb'{"k":"line","n":1,"t":0e-6,"s":"stdout","m":"x"}',
        rb'{"k":"line","n":1,"t":12345678901234567e-6,"s":"stdout","m":"x"}',
        rb'{"k":"line","n":1,"t":9007199254740993e-6,"s":"stdout","m":"x"}',
        rb'{"k":"line","n":1099511627776,"t":1e-6,"s":"stdout","m":"x"}',
        rb'{"k":"line","n":1099511627777,"t":1e-6,"s":"stdout","m":"x"}',
        rb'{"k":"line","n":1,"t":1e-6,"s":"stdout","l":"","m":"x"}',
        rb'{"k":"line","n":1,"t":1e-6,"s":"stdout","l":null,"m":"x"}',
        rb'{"k":"line","n":1,"t":1e-6,"s":"stdout","m":"x","m":"y"}',
        rb'{"k":"line","n":1,"t":1e-6,"s":"stdout","m":"x"} ',
        rb'{"k":"line","n":1,"t":1e-6,"s":"stdout","m":"' + b"x" * 16385 + b'"}',
    ],
)
def test_records_on_the_edge_of_the_writers_shape(record: bytes) -> None:
    _same(record + b"\n" + spool.encode_line(2, spool.STDOUT, "after"))
