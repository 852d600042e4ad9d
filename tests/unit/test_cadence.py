"""When the collector reads its next batch (`collector.cadence.Gathering`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from collector.cadence import GATHER_RUNS, Gathering

DEBOUNCE = 0.01


@dataclass
class Chunk:
    """A file's part of a batch, as the gathering sees it."""

    start: Any = None
    end: Any = None
    lines: list[str] = field(default_factory=list)


LINES = Chunk(lines=["a line"])  # a running task's output
START = Chunk(start={}, lines=["its first line"])
START_ALONE = Chunk(start={})
END = Chunk(end={}, lines=["its last line"])
WHOLE = Chunk(start={}, end={}, lines=["a small task's line"])


@pytest.mark.parametrize(
    ("chunks", "wait"),
    [
        ([LINES], DEBOUNCE),  # a running task's lines, followed live
        ([LINES, START, END], DEBOUNCE),
        ([START], DEBOUNCE),  # a task starting alone, already printing
        ([START_ALONE], 0.0),  # its start alone: its first lines are read as they come
        ([START_ALONE, LINES], DEBOUNCE),
        ([END, START], DEBOUNCE),  # a worker's tasks one after the other, with output
        ([START, START], GATHER_RUNS),  # small tasks starting and ending: gather more of them
        ([END, END], GATHER_RUNS),
        ([WHOLE] * 30 + [START, END], GATHER_RUNS),
    ],
)
def test_the_next_read_waits_longer_only_after_a_batch_of_several_runs_starting_or_ending(
    chunks: list[Chunk], wait: float
) -> None:
    gathering = Gathering(DEBOUNCE)
    gathering.read(100.0, chunks)
    assert gathering.next_read == pytest.approx(100.0 + wait)


def test_an_empty_read_leaves_the_next_read_where_it_was() -> None:
    gathering = Gathering(DEBOUNCE)
    gathering.read(100.0, [WHOLE, WHOLE])
    gathering.read(100.02, [])
    assert gathering.next_read == pytest.approx(100.0 + GATHER_RUNS)
