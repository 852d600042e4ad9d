"""When the collector reads its next batch (`collector.cadence.Gathering`)."""

from __future__ import annotations

import pytest

from collector.cadence import GATHER_RUNS, Gathering

DEBOUNCE = 0.01


@pytest.mark.parametrize(
    ("files", "runs_only", "starts", "ends", "wait"),
    [
        (1, False, 0, 0, DEBOUNCE),  # a running task's lines, followed live
        (3, False, 1, 1, DEBOUNCE),
        (1, True, 1, 0, DEBOUNCE),  # one task starting alone: its first lines follow at once
        # A worker's tasks one after the other, with output: one ends as the next starts.
        (2, True, 1, 1, DEBOUNCE),
        (2, True, 2, 0, GATHER_RUNS),  # small tasks starting and ending: gather more of them
        (2, True, 0, 2, GATHER_RUNS),
        (40, True, 35, 38, GATHER_RUNS),
    ],
)
def test_the_next_read_waits_longer_only_after_a_batch_of_several_runs_starting_or_ending(
    files: int, runs_only: bool, starts: int, ends: int, wait: float
) -> None:
    gathering = Gathering(DEBOUNCE)
    gathering.read(100.0, files=files, runs_only=runs_only, starts=starts, ends=ends)
    assert gathering.next_read == pytest.approx(100.0 + wait)


def test_an_empty_read_leaves_the_next_read_where_it_was() -> None:
    gathering = Gathering(DEBOUNCE)
    gathering.read(100.0, files=2, runs_only=True, starts=2, ends=2)
    gathering.read(100.02, files=0, runs_only=True, starts=0, ends=0)
    assert gathering.next_read == pytest.approx(100.0 + GATHER_RUNS)
