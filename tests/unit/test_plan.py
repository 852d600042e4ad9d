"""The batch plan: seq bases and the head+tail bound, without a database."""

from __future__ import annotations

from collector.plan import Run, Stored, plan
from collector.tail import FileChunk, FileState, Line


def run_of(
    seqs: range, *, base: int = 0, head: int = 5, tail: int = 5, before: int = 0, end: bool = False
) -> Run:
    state = FileState(name="t.1.1.jsonl", inode=1)
    chunk = FileChunk(state=state, end_offset=0)
    chunk.lines = [Line(n, 1_800_000_000.0, "stdout", None, f"line {n}") for n in seqs]
    if end:
        chunk.end = {"state": "SUCCESS", "t": 1_800_000_001.0}
    return Run(chunk, "task", base, head, tail, before)


def stored_seqs(rows: list[tuple[object, ...]]) -> list[object]:
    return [row[1] for row in rows]


def test_short_run_keeps_every_line_with_its_base() -> None:
    rows, trims, advances, ends, markers = plan([run_of(range(1, 8), base=100)], Stored())
    assert stored_seqs(rows) == list(range(101, 108))
    assert (trims, markers, ends) == ([], [], [])
    assert advances[0]["last_seq"] == 107 and advances[0]["added"] == 7


def test_long_run_in_one_batch_keeps_head_and_tail_and_marks_the_gap() -> None:
    rows, trims, advances, ends, markers = plan([run_of(range(1, 101), end=True)], Stored())
    assert stored_seqs(rows) == [1, 2, 3, 4, 5, 96, 97, 98, 99, 100]
    assert trims == []  # the omitted lines were never inserted, so there is nothing to delete
    assert markers[0]["seq"] == 6 and "90 lines omitted" in markers[0]["message"]
    assert ends[0]["omitted"] == 90
    assert advances[0]["added"] == 11  # ten lines and the marker


def test_tail_window_slides_across_batches() -> None:
    first = run_of(range(1, 13))  # keeps 1-5 and 8-12
    rows, *_ = plan([first], Stored())
    assert stored_seqs(rows) == [1, 2, 3, 4, 5, 8, 9, 10, 11, 12]
    second = run_of(range(13, 16), before=first.max_seq)  # 13-15 arrive: 8-10 leave the window
    rows, trims, advances, _, _ = plan([second], Stored())
    assert stored_seqs(rows) == [13, 14, 15]
    assert trims == [{"task_id": "task", "low": 7, "high": 10}]
    assert advances[0]["added"] == 0  # three in, three out


def test_published_lines_are_the_stored_ones() -> None:
    stored = Stored()
    rows, *_ = plan([run_of(range(1, 30))], stored)
    assert [line["seq"] for line in stored.lines["task"]] == stored_seqs(rows)
