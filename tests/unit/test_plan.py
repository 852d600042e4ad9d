"""The batch plan: seq bases and the head+tail bound, without a database."""

from __future__ import annotations

from collector.batch import FileChunk, FileState, Line
from collector.copydata import Rows, iso
from collector.plan import Run, plan
from collector.publish import line_messages


def run_of(
    seqs: range, *, base: int = 0, head: int = 5, tail: int = 5, before: int = 0, end: bool = False
) -> Run:
    state = FileState(name="t.1.1.jsonl", inode=1)
    chunk = FileChunk(state=state, end_offset=0)
    chunk.lines = [Line(n, 1_800_000_000.0, "stdout", None, f"line {n}") for n in seqs]
    if end:
        chunk.end = {"state": "SUCCESS", "t": 1_800_000_001.0}
    return Run(chunk, "task", base, head, tail, before)


def stored_seqs(rows: list[Rows]) -> list[int]:
    return [base + line.seq for _, base, lines in rows for line in lines]


def test_short_run_keeps_every_line_with_its_base() -> None:
    rows, trims, advances, ends, markers = plan([run_of(range(1, 8), base=100)])
    assert stored_seqs(rows) == list(range(101, 108))
    assert (trims, markers, ends) == ([], [], [])
    assert advances[0]["last_seq"] == 107 and advances[0]["added"] == 7


def test_long_run_in_one_batch_keeps_head_and_tail_and_marks_the_gap() -> None:
    rows, trims, advances, ends, markers = plan([run_of(range(1, 101), end=True)])
    assert stored_seqs(rows) == [1, 2, 3, 4, 5, 96, 97, 98, 99, 100]
    assert trims == []  # the omitted lines were never inserted, so there is nothing to delete
    assert markers[0]["seq"] == 6 and "90 lines omitted" in markers[0]["message"]
    assert ends[0]["omitted"] == 90
    assert advances[0]["added"] == 11  # ten lines and the marker


def test_tail_window_slides_across_batches() -> None:
    first = run_of(range(1, 13))  # keeps 1-5 and 8-12
    rows, *_ = plan([first])
    assert stored_seqs(rows) == [1, 2, 3, 4, 5, 8, 9, 10, 11, 12]
    second = run_of(range(13, 16), before=first.max_seq)  # 13-15 arrive: 8-10 leave the window
    rows, trims, advances, _, _ = plan([second])
    assert stored_seqs(rows) == [13, 14, 15]
    assert trims == [{"task_id": "task", "low": 7, "high": 10}]
    assert advances[0]["added"] == 0  # three in, three out


def test_published_lines_are_the_stored_ones() -> None:
    rows, *_ = plan([run_of(range(1, 30))])
    messages = line_messages(rows)
    assert [line["seq"] for line in messages] == stored_seqs(rows)
    assert messages[0] == {
        "seq": 1,
        "ts": iso(1_800_000_000.0),
        "stream": "stdout",
        "level": None,
        "message": "line 1",
    }


def test_a_run_goes_on_in_place_while_nothing_was_allocated_after_it() -> None:
    run = run_of(range(1, 6), base=10)
    assert run.allocate(last_seq=10, after=5) == 15
    assert (run.seq_base, run.segments, run.seq(5)) == (10, (), 15)


def test_a_run_continues_after_seqs_another_run_took() -> None:
    first = run_of(range(6, 11), base=0, before=5)  # lines 1-5 stored at seqs 1-5
    # Meanwhile another run of the task (a retry on another host) took seqs 6-8.
    assert first.allocate(last_seq=8, after=10) == 13
    assert first.segments == ((6, 3),)
    assert [first.seq(n) for n in (1, 5, 6, 10)] == [1, 5, 9, 13]
    rows, _, advances, _, _ = plan([first])
    assert stored_seqs(rows) == [9, 10, 11, 12, 13] and advances[0]["last_seq"] == 13


def test_the_tail_window_and_marker_follow_the_segments() -> None:
    # 12 lines of a head 5 + tail 5 run: 1-5 at seqs 101-105, 6-12 moved to 201-207.
    run = run_of(range(13, 16), base=100, before=12, end=True)
    run.segments = ((6, 195),)
    assert list(run.seq_ranges(7, 10)) == [(202, 205)]
    assert list(run.seq_ranges(3, 7)) == [(103, 105), (200, 202)]
    rows, trims, _, ends, markers = plan([run])
    assert stored_seqs(rows) == [208, 209, 210]
    assert trims == [{"task_id": "task", "low": 202, "high": 205}]  # lines 8-10 leave
    assert markers[0]["seq"] == 201 and ends[0]["omitted"] == 5  # at line 6, in its segment


def test_lines_across_segments_are_stored_each_at_its_segments_seq() -> None:
    run = run_of(range(3, 9), base=100, head=50, tail=50, before=2)
    run.segments = ((6, 195),)  # lines 1-5 at 101-105, 6 on at 201
    rows, *_ = plan([run])
    assert stored_seqs(rows) == [103, 104, 105, 201, 202, 203]
    assert [(piece.base, len(piece.lines)) for piece in rows] == [(100, 3), (195, 3)]
    assert [line["seq"] for line in line_messages(rows)] == stored_seqs(rows)
