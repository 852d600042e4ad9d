"""The Celery app the shim benchmark runs in a solo-pool worker.

Tasks print the same lines: captured by the shim (`TerminalLoggingTask`), to a plain file (no
capture), and through the seed guide's `DBLogWriter`; one more writes each line's record with
one `os.write` (the floor). Each returns ns per line (wall, thread CPU; the seed way wall only).
"""

from __future__ import annotations

import contextlib
import os
import time

import psycopg
from celery import Celery

from bench.printing import DBLogWriter, timed_floor, timed_prints, timed_prints_both
from capture_shim import TerminalLoggingTask

_url = os.environ.get("TASKLOG_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
app = Celery("tasklog-bench", broker=_url, backend=_url)
app.conf.update(
    worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True, result_expires=600
)


@app.task(name="bench.captured", base=TerminalLoggingTask)
def captured(count: int, seed: int, style: str = "fstring") -> tuple[float, float]:
    return timed_prints_both(count, seed, style)


@app.task(name="bench.plain")
def plain(count: int, seed: int, path: str, style: str = "fstring") -> tuple[float, float]:
    with open(path, "w", encoding="utf-8") as f, contextlib.redirect_stdout(f):
        return timed_prints_both(count, seed, style)


@app.task(name="bench.floor")
def floor(count: int, seed: int, directory: str) -> tuple[float, float]:
    return timed_floor(count, seed, directory)


@app.task(name="bench.seed_db", bind=True)
def seed_db(self: object, count: int, seed: int, database_url: str) -> float:
    task_id = self.request.id  # type: ignore[attr-defined]
    with psycopg.connect(database_url, autocommit=True) as conn:
        writer = DBLogWriter(conn, task_id, "stdout")
        with contextlib.redirect_stdout(writer):  # type: ignore[type-var]
            per_line = timed_prints(count, seed)
            writer.flush()
    return per_line


@app.task(name="bench.ticks", base=TerminalLoggingTask)
def ticks(count: int, interval: float) -> int:
    """Print `count` lines `interval` seconds apart, each carrying the time it was printed."""
    start = time.monotonic()
    for i in range(1, count + 1):
        print(f"tick {i} {time.time():.6f}")
        pause = start + i * interval - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    return count


@app.task(name="bench.trivial", base=TerminalLoggingTask)
def trivial(i: int) -> int:
    """Celery's `test_large_group` shape: a task that does nearly nothing (one printed line)."""
    print("trivial", i)
    return i
