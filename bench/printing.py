"""What a benchmark task does: print lines, timed, to whatever `sys.stdout` is.

Also the seed guide's way of capturing output (``DBLogWriter``: one committed INSERT per
line), rebuilt on psycopg so it costs no more than the guide's Django ORM would.
"""

from __future__ import annotations

import os
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


#: How a task prints each line: one f-string (two writes to `sys.stdout`: the text, then
#: "\n"), or the same text and number as two arguments (four writes: text, " ", number, "\n").
STYLES = ("fstring", "multiarg")


def timed_prints(count: int, seed: int, style: str = "fstring") -> float:
    """Print `count` realistic lines; nanoseconds per line (line generation not counted)."""
    return timed_prints_both(count, seed, style)[0]


def timed_prints_both(count: int, seed: int, style: str = "fstring") -> tuple[float, float]:
    """`timed_prints`, as (wall, CPU time of this thread) nanoseconds per line.

    On a shared machine the CPU time is the steadier figure: it leaves out the time the task
    waited for a core. It counts the thread's own system calls, not other threads' work.
    """
    lines = sample_lines(count, seed)
    wall, cpu = time.perf_counter_ns, time.thread_time_ns
    if style == "multiarg":
        start, start_cpu = wall(), cpu()
        for i, line in enumerate(lines):
            print(line, i)
    else:
        start, start_cpu = wall(), cpu()
        for i, line in enumerate(lines):
            print(f"{line} {i}")
    return (wall() - start) / count, (cpu() - start_cpu) / count


def timed_floor(count: int, seed: int, directory: str) -> tuple[float, float]:
    """One `O_APPEND` `os.write` per line of the record the shim writes for it; ns per line.

    The floor of the shim's design (one write per record, whole records for the reader): the
    record bytes are made before the clock starts. (wall, CPU) as in `timed_prints_both`.
    """
    from capture_shim import spool

    records = [
        spool.encode_line(i + 1, spool.STDOUT, f"{line} {i}")
        for i, line in enumerate(sample_lines(count, seed))
    ]
    path = os.path.join(directory, f"floor-{os.getpid()}-{seed}.bin")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o600)
    write = os.write
    wall, cpu = time.perf_counter_ns, time.thread_time_ns
    try:
        start, start_cpu = wall(), cpu()
        for record in records:
            write(fd, record)
        return (wall() - start) / count, (cpu() - start_cpu) / count
    finally:
        os.close(fd)
        os.unlink(path)


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
