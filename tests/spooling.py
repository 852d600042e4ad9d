"""Spool files written from the test process, exactly as a worker's shim writes them."""

from __future__ import annotations

from pathlib import Path

from capture_shim import spool
from capture_shim.capture import TaskCapture
from capture_shim.config import ShimConfig

#: Lines of a task `Sender.tasks` sends.
LINES = 500


class Sender:
    """Writes spool files as a worker's shim does, and counts what it sent."""

    def __init__(self, spool_dir: Path) -> None:
        self.config = ShimConfig(
            enabled=True,
            spool_dir=str(spool_dir),
            max_lines=2 * LINES,
            max_line_bytes=16384,
            record_args=False,
        )
        self.sent: dict[str, int] = {}
        self.running: dict[str, TaskCapture] = {}

    def begin(self, task_id: str, lines: int) -> None:
        cap = TaskCapture(
            self.config,
            task_id,
            {"task_id": task_id, "name": "failover", "max_lines": self.config.max_lines},
        )
        self.running[task_id] = cap
        self.write(task_id, lines)

    def write(self, task_id: str, lines: int) -> None:
        cap = self.running[task_id]
        first = self.sent.get(task_id, 0) + 1
        for i in range(first, first + lines):
            cap.write(spool.STDOUT, f"{task_id} line {i}\n")
        self.sent[task_id] = first + lines - 1

    def finish(self, task_id: str, lines: int = 0) -> None:
        self.write(task_id, lines)
        self.running.pop(task_id).finish("SUCCESS")

    def tasks(self, prefix: str, count: int) -> None:
        for t in range(count):
            self.begin(f"{prefix}-{t}", LINES)
            self.finish(f"{prefix}-{t}")

    @property
    def total(self) -> int:
        return sum(self.sent.values())
