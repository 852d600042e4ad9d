"""What a committed batch stored: the result `Store.commit` returns and the collector applies.

The lines go to the live path (`collector.publish`), the tasks' rows too, and the runs'
placements to the files' bookkeeping (`SpoolDir.commit`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from collector.batch import FileState
from collector.copydata import Rows
from collector.plan import Run


@dataclass
class Stored:
    """What a committed batch stored: for the live path and for the files' bookkeeping."""

    #: The lines stored, per task: the live path makes messages of the watched tasks' alone.
    lines: dict[str, list[Rows]] = field(default_factory=dict)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    rows: int = 0
    #: Times outside their run's window, clamped (`collector.clock`).
    clamped: int = 0
    #: Files whose start claims a settled task (`Store._place`): set aside, nothing stored.
    refused: list[FileState] = field(default_factory=list)
