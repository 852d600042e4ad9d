"""What a benchmark task does: print lines, timed, to whatever `sys.stdout` is.

Also the seed guide's way of capturing output (``DBLogWriter``: one committed INSERT per
line), rebuilt on psycopg so it costs no more than the guide's Django ORM would.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from bench.common import sample_lines

#: The guide's `TaskLogLine` model as Django would create it.
SEED_TABLE = """
CREATE TABLE IF NOT EXISTS celery_tasklog_tasklogline (
    id bigserial PRIMARY KEY,
    task_id varchar(255) NOT NULL,
    "timestamp" timestamptz NOT NULL,
    stream varchar(10) NOT NULL,
    message text NOT NULL
);
CREATE INDEX IF NOT EXISTS celery_tasklog_tasklogline_task_id
    ON celery_tasklog_tasklogline (task_id);
"""
_SEED_INSERT = (
    'INSERT INTO celery_tasklog_tasklogline (task_id, "timestamp", stream, message)'
    " VALUES (%s, %s, %s, %s) RETURNING id"
)


def timed_prints(count: int, seed: int) -> float:
    """Print `count` realistic lines; nanoseconds per line (line generation not counted)."""
    lines = sample_lines(count, seed)
    start = time.perf_counter_ns()
    for line in lines:
        print(line)
    return (time.perf_counter_ns() - start) / count


class DBLogWriter:
    """The seed guide's writer: every complete line is one INSERT, committed on its own."""

    def __init__(self, conn: Any, task_id: str, stream: str) -> None:
        self.conn = conn
        self.task_id = task_id
        self.stream = stream
        self.buffer = ""

    def write(self, msg: str) -> int:
        self.buffer += msg
        while "\n" in self.buffer:
            line, self.buffer = self.buffer.split("\n", 1)
            if line:
                self._create(line)
        return len(msg)

    def flush(self) -> None:
        if self.buffer:
            self._create(self.buffer)
            self.buffer = ""

    def _create(self, line: str) -> None:
        # Django's `objects.create` in autocommit mode: INSERT … RETURNING id, committed.
        self.conn.execute(_SEED_INSERT, (self.task_id, datetime.now(UTC), self.stream, line))
