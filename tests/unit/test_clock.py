"""`collector.clock`: a run's times held to its window, a batch's new partitions bounded."""

from __future__ import annotations

from datetime import date, timedelta

from collector import clock
from collector.batch import Batch, FileChunk, FileState, Line

NOW = 1_800_000_000.0
DAY = 86400.0


def chunk(times: list[float], start: float | None = None) -> FileChunk:
    state = FileState(name="t.1.1.jsonl", inode=1)
    lines = [Line(n, t, "stdout", None, f"line {n}") for n, t in enumerate(times, 1)]
    record = None if start is None else {"k": "start", "task_id": "t", "t": start}
    return FileChunk(state=state, end_offset=0, start=record, lines=lines)


def today(offset: int = 0) -> date:
    return date(1970, 1, 1) + timedelta(days=int(NOW // DAY) + offset)


def test_honest_times_are_left_alone() -> None:
    c = chunk([NOW - 5, NOW - 1, NOW], start=NOW - 10)
    days, clamped = clock.hold(Batch([c]), set(), 30, now=NOW)
    assert clamped == 0
    assert [line.t for line in c.lines] == [NOW - 5, NOW - 1, NOW]
    assert days == {today()}


def test_times_outside_the_run_window_are_clamped_and_counted() -> None:
    c = chunk([NOW - 400 * DAY, NOW - 1000, NOW + 10 * DAY], start=NOW - 100)
    _, clamped = clock.hold(Batch([c]), set(), 30, now=NOW)
    assert clamped == 3
    assert [line.t for line in c.lines] == [
        NOW - 100 - clock.SKEW,
        NOW - 100 - clock.SKEW,
        NOW + clock.SKEW,
    ]


def test_a_start_outside_the_retention_window_is_held_to_it() -> None:
    c = chunk([NOW], start=4_000_000_000.0)
    clock.hold(Batch([c]), set(), 30, now=NOW)
    assert c.start is not None and c.start["t"] == NOW + clock.SKEW
    c = chunk([NOW - 20 * DAY], start=900_000_000.0)
    clock.hold(Batch([c]), set(), 30, now=NOW)
    assert c.start is not None and c.start["t"] == clock.window_floor(30, NOW)


def test_a_batch_creates_at_most_a_few_new_partitions() -> None:
    times = [NOW - back * DAY for back in range(20)]  # 20 days, all within the window
    c = chunk(times, start=NOW - 25 * DAY)
    days, clamped = clock.hold(Batch([c]), {today(-15)}, 30, now=NOW)
    assert len(days - {today(-15)}) <= clock.MAX_NEW_PARTITIONS
    assert clamped == 20 - 1 - clock.MAX_NEW_PARTITIONS
    # Every line now falls on a day that has (or gets) its partition, its order unchanged.
    assert {date(1970, 1, 1) + timedelta(days=int(line.t // DAY)) for line in c.lines} == days
    assert [line.seq for line in c.lines] == list(range(1, 21))
