"""Reading spool files: whole records only, corrupt ones skipped and counted, resumable."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from capture_shim import spool
from collector.batch import FileChunk, FileState
from collector.records import parse_record, parse_records
from collector.tail import SpoolDir

NAME = "task-1.4242.1000.jsonl"


def _start(task_id: str = "task-1") -> bytes:
    return spool.encode({"k": spool.START, "v": spool.VERSION, "t": 1.7e9, "task_id": task_id})


def _line(n: int, text: str | None = None) -> bytes:
    return spool.encode_line(n, spool.STDOUT, f"line {n}" if text is None else text)


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def _spool(directory: Path, known: dict[str, FileState] | None = None) -> SpoolDir:
    reader = SpoolDir(directory, known or {})
    reader.scan()
    return reader


def _messages(reader: SpoolDir, max_lines: int = 1000, max_bytes: int = 1 << 20) -> list[str]:
    batch = reader.read_batch(max_lines, max_bytes)
    reader.commit(batch)
    return [line.message for chunk in batch.chunks for line in chunk.lines]


def test_a_trailing_partial_line_is_left_for_later(spool_dir: Path) -> None:
    path = spool_dir / NAME
    whole = _start() + _line(1)
    partial = _line(2)
    _append(path, whole + partial[:10])
    reader = _spool(spool_dir)
    batch = reader.read_batch(1000, 1 << 20)
    (chunk,) = batch.chunks
    assert chunk.start is not None and chunk.start["task_id"] == "task-1"
    assert [line.message for line in chunk.lines] == ["line 1"]
    assert chunk.end_offset == len(whole) and chunk.corrupt == 0
    reader.commit(batch)

    assert not reader.read_batch(1000, 1 << 20)  # nothing new: still only the partial
    reader.scan()
    assert not reader.read_batch(1000, 1 << 20)

    _append(path, partial[10:])
    reader.touched({NAME})
    assert _messages(reader) == ["line 2"]
    assert reader.files[NAME].offset == len(whole + partial)


def test_a_corrupt_line_in_the_middle_is_skipped_and_counted(spool_dir: Path) -> None:
    path = spool_dir / NAME
    bad = [
        b'{"k":"line","n":2,"t":1.0,"s":"stdout","m":"cut off\n',  # torn JSON
        b"\x00\x00\x00 garbage\n",
        b'{"k":"line","n":0,"t":1.0,"s":"stdout","m":"seq 0"}\n',  # not a valid seq
        b'{"k":"line","n":3,"t":1.0,"s":"nowhere","m":"bad stream"}\n',
        b'{"k":"mystery"}\n',
        b"[1, 2]\n",
    ]
    _append(path, _start() + _line(1) + b"".join(bad) + _line(4) + _line(5))
    reader = _spool(spool_dir)
    batch = reader.read_batch(1000, 1 << 20)
    reader.commit(batch)
    assert [line.message for c in batch.chunks for line in c.lines] == [
        "line 1",
        "line 4",
        "line 5",
    ]
    assert batch.corrupt == len(bad)
    assert reader.files[NAME].offset == path.stat().st_size


def test_reading_resumes_from_a_stored_offset(spool_dir: Path) -> None:
    path = spool_dir / NAME
    head = _start() + _line(1) + _line(2)
    _append(path, head + _line(3) + _line(4))
    known = {
        NAME: FileState(
            name=NAME,
            inode=path.stat().st_ino,
            offset=len(head),
            task_id="task-1",
            max_seq=2,
            size=len(head),
        )
    }
    reader = _spool(spool_dir, known)
    batch = reader.read_batch(1000, 1 << 20)
    (chunk,) = batch.chunks
    assert chunk.start is None  # already stored before the restart
    assert [line.seq for line in chunk.lines] == [3, 4]


def test_batches_stop_at_max_lines_and_continue_where_they_stopped(spool_dir: Path) -> None:
    for n in range(3):
        _append(
            spool_dir / f"t{n}.1.{n}.jsonl",
            _start(f"t{n}") + b"".join(_line(i, f"t{n} {i}") for i in range(1, 5)),
        )
    reader = _spool(spool_dir)
    seen: list[str] = []
    firsts: list[str] = []
    while True:
        batch = reader.read_batch(3, 1 << 20)
        if not batch:
            break
        assert batch.lines <= 3
        reader.commit(batch)
        seen += [line.message for c in batch.chunks for line in c.lines]
        firsts.append(batch.chunks[0].state.name.split(".")[0])
    # Every line once, each file in its order; the files take turns (least recently served
    # first), whatever their names say.
    assert sorted(seen) == sorted(f"t{n} {i}" for n in range(3) for i in range(1, 5))
    for n in range(3):
        assert [m for m in seen if m.startswith(f"t{n} ")] == [f"t{n} {i}" for i in range(1, 5)]
    assert sorted(firsts[:3]) == ["t0", "t1", "t2"]


def test_the_batch_read_while_two_are_in_flight_has_files_of_its_own(spool_dir: Path) -> None:
    """Twenty backlogs: the batch read ahead, which must leave out the files of the two batches
    in flight (their offsets are about to move), still finds lines to read; no file is in two
    of the three."""
    for n in range(20):
        _append(
            spool_dir / f"t{n}.1.{n}.jsonl",
            _start(f"t{n}") + b"".join(_line(i, f"t{n} {i}") for i in range(1, 1001)),
        )
    reader = _spool(spool_dir)
    first = reader.read_batch(6000, 1 << 24)
    second = reader.read_batch(6000, 1 << 24, skip={c.state.name for c in first.chunks})
    in_flight = {c.state.name for c in first.chunks + second.chunks}
    third = reader.read_batch(6000, 1 << 24, skip=in_flight)
    assert first.lines == second.lines == 6000
    assert third.lines > 0
    names = [{c.state.name for c in b.chunks} for b in (first, second, third)]
    assert not names[0] & names[1] and not names[2] & (names[0] | names[1])


def test_a_replaced_file_is_read_from_its_start(spool_dir: Path) -> None:
    path = spool_dir / NAME
    _append(path, _start() + _line(1))
    reader = _spool(spool_dir)
    assert _messages(reader) == ["line 1"]
    # Names carry pid and start time, so a replacement is rare; the inode tells it apart.
    # (The old file is held open so that the new one cannot reuse its inode.)
    with path.open("rb"):
        os.unlink(path)
        _append(path, _start() + _line(1, "again") + _line(2, "and more"))
        reader.scan()
        assert _messages(reader) == ["again", "and more"]


def test_stored_text_is_cleaned_of_nul_and_lone_surrogates(spool_dir: Path) -> None:
    _append(spool_dir / NAME, _start() + _line(1, "a\x00b") + _line(2, "c\udcffd"))
    assert _messages(_spool(spool_dir)) == ["a\\x00b", "c\\udcffd"]


_LINE_OR_GARBAGE = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda n, t: _line(n, t), st.integers(-5, 10**20), st.text(max_size=50)),
    st.sampled_from(
        [
            b"\n",
            b"{",
            b'{"k":"line"}\n',
            b'{"k":"end"}\n',
            b'{"k":"start","v":1}\n',
            b'{"k":"line","n":1,"t":"x","s":"stdout","m":1}\n',
            b"\xff\xfe\n",
            b'{"k":"progress"}\n',
            b"[" * 5000 + b"\n",
            b"1e999\n",
        ]
    ),
)


@settings(max_examples=150, deadline=None)
@given(chunks=st.lists(_LINE_OR_GARBAGE, max_size=12), max_lines=st.integers(1, 5))
def test_arbitrary_bytes_never_break_read_batch(chunks: list[bytes], max_lines: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        path = directory / NAME
        _append(path, _start() + _line(1))
        reader = _spool(directory)
        reader.commit(reader.read_batch(max_lines, 1 << 20))
        for data in chunks:
            _append(path, data)
            reader.touched({NAME})
            for _ in range(1000):  # reading to exhaustion ends
                batch = reader.read_batch(max_lines, 1 << 16)
                if not batch:
                    break
                reader.commit(batch)
            else:
                raise AssertionError("read_batch kept returning batches")
        # Everything up to the last newline is consumed, never past it.
        content = path.read_bytes()
        assert reader.files[NAME].offset == content.rfind(b"\n") + 1


_odd_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.text(alphabet=st.sampled_from("ab\x00\t\\é\ud800"), max_size=20),
    st.lists(st.integers(), max_size=2),
)


@st.composite
def _line_records(draw: st.DrawFn) -> bytes:
    """Line records, mostly well formed, some with any value in any field."""
    rec: dict[str, object] = {
        "k": spool.LINE,
        "n": draw(st.integers(min_value=1, max_value=40)),
        "t": draw(st.floats(min_value=1e9, max_value=2e9)),
        "s": draw(st.sampled_from([spool.STDOUT, spool.STDERR, spool.LOG])),
        "m": draw(st.text(max_size=80)),
    }
    if draw(st.booleans()):
        rec["l"] = draw(st.sampled_from(["INFO", "WARNING", "x" * 70, "é"]))
    for key in draw(st.lists(st.sampled_from(["k", "n", "t", "s", "m", "l"]), max_size=2)):
        if draw(st.booleans()):
            rec[key] = draw(_odd_values)
        else:
            rec.pop(key, None)
    return spool.encode(rec)


@settings(max_examples=150, deadline=None)
@given(st.lists(_line_records(), max_size=30), st.integers(min_value=1, max_value=40))
def test_the_reader_decides_every_record_as_the_one_record_parser_does(
    records: list[bytes], line_bytes: int
) -> None:
    """The inline check of common line records (`parse_records`) keeps, changes and refuses
    exactly what `parse_record` does, record by record."""
    state = FileState(name=NAME, inode=1)
    fast = FileChunk(state=state, end_offset=0, max_line_bytes=line_bytes)
    used, _ = parse_records(fast, [r.rstrip(b"\n") for r in records], 0, 10_000)
    slow = FileChunk(state=state, end_offset=0, max_line_bytes=line_bytes)
    for record in records:
        parse_record(slow, record.rstrip(b"\n"))
    assert used == sum(len(r) for r in records)
    assert fast.lines == slow.lines
    assert [type(line) for line in fast.lines] == [type(line) for line in slow.lines]
    assert (fast.corrupt, fast.last_seq) == (slow.corrupt, slow.last_seq)


def test_a_tasks_runs_are_read_in_the_order_they_started_whatever_was_found_first(
    spool_dir: Path,
) -> None:
    # Two deliveries of one task (pool processes 7 and 9) and another task's file, found in
    # an order that puts the later run first: the batch keeps the runs in started order.
    later, earlier, other = "again.7.2000.jsonl", "again.9.1000.jsonl", "other.8.1500.jsonl"
    reader = SpoolDir(spool_dir, {})
    for name, text in ((later, "second run"), (other, "other task"), (earlier, "first run")):
        _append(spool_dir / name, _start(name.split(".")[0]) + _line(1, text))
        reader.touched({name})
    batch = reader.read_batch(1000, 1 << 20)
    order = [line.message for chunk in batch.chunks for line in chunk.lines]
    assert order.index("first run") < order.index("second run")
    assert sorted(order) == ["first run", "other task", "second run"]


def test_a_later_run_waits_while_an_earlier_run_of_its_task_is_in_flight(spool_dir: Path) -> None:
    # The first run's start alone is being committed when its retry is found whole: read
    # now, the retry's line would take the task's next seq before the first run's line did.
    earlier, later, other = "again.9.1000.jsonl", "again.9.2000.jsonl", "other.8.1500.jsonl"
    reader = SpoolDir(spool_dir, {})
    _append(spool_dir / earlier, _start("again"))
    reader.touched({earlier})
    first = reader.read_batch(1000, 1 << 20)
    assert [chunk.state.name for chunk in first.chunks] == [earlier]
    _append(spool_dir / earlier, _line(1, "first run"))
    for name, text in ((later, "second run"), (other, "other task")):
        _append(spool_dir / name, _start(name.split(".")[0]) + _line(1, text))
        reader.touched({name})
    reader.touched({earlier})
    ahead = reader.read_batch(1000, 1 << 20, {earlier})  # the first batch still in flight
    assert [line.message for chunk in ahead.chunks for line in chunk.lines] == ["other task"]
    reader.commit(first)
    reader.commit(ahead)
    after = reader.read_batch(1000, 1 << 20)
    assert [line.message for chunk in after.chunks for line in chunk.lines] == [
        "first run",
        "second run",
    ]
