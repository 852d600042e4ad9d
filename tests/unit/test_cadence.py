"""When the collector reads its next batch (`collector.cadence.Gathering`)."""

from __future__ import annotations

import pytest

from collector.cadence import GATHER_RUNS, Gathering

DEBOUNCE = 0.01


@pytest.mark.parametrize(
    ("files", "runs_only", "wait"),
    [
        (1, False, DEBOUNCE),  # a running task's lines, followed live
        (3, False, DEBOUNCE),
        (1, True, DEBOUNCE),  # one task starting alone: its first lines follow at once
        (2, True, GATHER_RUNS),  # small tasks starting and ending: gather more of them
        (40, True, GATHER_RUNS),
    ],
)
def test_the_next_read_waits_longer_only_after_a_batch_of_several_runs_starting_or_ending(
    files: int, runs_only: bool, wait: float
) -> None:
    gathering = Gathering(DEBOUNCE)
    gathering.read(100.0, files=files, runs_only=runs_only)
    assert gathering.next_read == pytest.approx(100.0 + wait)


def test_an_empty_read_leaves_the_next_read_where_it_was() -> None:
    gathering = Gathering(DEBOUNCE)
    gathering.read(100.0, files=2, runs_only=True)
    gathering.read(100.02, files=0, runs_only=True)
    assert gathering.next_read == pytest.approx(100.0 + GATHER_RUNS)
