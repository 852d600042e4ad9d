"""A search's time windows: contiguous, newest first, each inside one trigram slice or between
slices, so that every line is looked at exactly once and an indexed range is never scanned."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from api.lookups import Search
from tasklog.core import trigram

NOW = datetime(2026, 12, 7, 12, 7, 30, tzinfo=UTC)
MIDNIGHT = datetime(2026, 12, 7, tzinfo=UTC)


def hour(h: int) -> trigram.Slice:
    return trigram.Slice(MIDNIGHT + timedelta(hours=h), MIDNIGHT + timedelta(hours=h + 1))


def names(*slices: trigram.Slice) -> list[str]:
    return [s.name for s in slices]


def contiguous(windows: list[tuple[datetime | None, datetime | None]]) -> None:
    for (low, _), (_, high) in itertools.pairwise(windows):
        assert low == high


def test_names_round_trip() -> None:
    last = trigram.Slice(MIDNIGHT + timedelta(hours=23), MIDNIGHT + timedelta(days=1))
    assert last.name == "lines_20261207_2300_2400_trgm"
    minutes = trigram.Slice(NOW - timedelta(minutes=7, seconds=30), NOW - timedelta(seconds=30))
    for piece in (hour(0), hour(23), last, minutes):
        assert trigram.parse(piece.name) == piece
    assert trigram.parse("lines_20261207_message_trgm") == MIDNIGHT.date()
    for other in (
        "lines_20261207_pkey",
        "lines_20261207_1300_1200_trgm",
        "lines_20261307_0000_0100_trgm",
    ):
        assert trigram.parse(other) is None


def test_today_is_cut_along_its_slices() -> None:
    yesterday = trigram.day_index(MIDNIGHT.date() - timedelta(days=1))
    five = trigram.Slice(MIDNIGHT + timedelta(hours=12), MIDNIGHT + timedelta(hours=12, minutes=5))
    indexes = [yesterday, *names(*(hour(h) for h in (0, 1, 3)), five)]
    windows = Search("x").windows(NOW, indexes)
    contiguous(windows)

    def at(h: int, m: int = 0) -> datetime:
        return MIDNIGHT + timedelta(hours=h, minutes=m)

    assert windows == [
        (NOW, None),  # a worker's clock ahead
        (at(12, 5), NOW),  # the newest minutes: scanned
        (at(12), at(12, 5)),
        (at(4), at(12)),  # not indexed (yet): scanned
        (at(3), at(4)),
        (at(2), at(3)),
        (at(1), at(2)),
        (at(0), at(1)),
        (MIDNIGHT - timedelta(days=7), MIDNIGHT),  # the closed days, one index each
        (None, MIDNIGHT - timedelta(days=7)),
    ]


def test_an_hour_and_its_slices_both_there_takes_the_hour() -> None:
    five = trigram.Slice(MIDNIGHT + timedelta(hours=11), MIDNIGHT + timedelta(hours=11, minutes=5))
    windows = Search("x").windows(NOW, names(hour(11), five))
    assert (MIDNIGHT + timedelta(hours=11), MIDNIGHT + timedelta(hours=12)) in windows
    contiguous(windows)


def test_yesterday_without_its_day_index_is_cut_too_and_since_stops_the_walk() -> None:
    late = trigram.Slice(MIDNIGHT - timedelta(hours=1), MIDNIGHT)
    windows = Search("x").windows(NOW, [late.name])
    assert (late.low, late.high) in windows
    contiguous(windows)
    since = MIDNIGHT - timedelta(minutes=30)
    windows = Search("x", since=since).windows(NOW, [late.name])
    assert windows[-1] == (since, MIDNIGHT)
    contiguous(windows)


def test_until_and_a_cursor_start_below_now() -> None:
    until = MIDNIGHT + timedelta(hours=3, minutes=30)
    windows = Search("x", until=until).windows(NOW, names(hour(3)))
    assert windows[0] == (MIDNIGHT + timedelta(hours=3), until)  # inside the slice: indexed
    contiguous(windows)
    assert Search("x", since=NOW + timedelta(hours=1)).windows(NOW, []) == [(NOW, None)]


def test_a_cursor_window_takes_in_lines_stamped_in_the_cursor_line_s_microsecond() -> None:
    """Lines printed within one microsecond share their time: the next page starts at that
    time itself (the keyset on task and seq cuts it), not below it."""
    cursor = MIDNIGHT + timedelta(hours=3, minutes=30)
    windows = Search("x", before=(cursor, "task", 5)).windows(NOW, [])
    assert windows[0][1] == cursor + timedelta(microseconds=1)
    contiguous(windows)
