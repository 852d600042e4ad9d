"""Retention: old partitions are dropped whole, old tasks deleted; recent data untouched."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta

import psycopg

DAYS = 40
LINES_PER_DAY = 5_000
TASKS_PER_DAY = 20


def fill(database_url: str) -> None:
    """40 days of tasks and lines, in the day partitions the collector would have made."""
    today = datetime.now(UTC).date()
    with psycopg.connect(database_url, autocommit=True) as conn:
        for back in range(DAYS):
            day: date = today - timedelta(days=back)
            name = f"lines_{day:%Y%m%d}"
            conn.execute(
                f"CREATE TABLE {name} PARTITION OF lines FOR VALUES "
                f"FROM ('{day} 00:00:00+00') TO ('{day + timedelta(days=1)} 00:00:00+00')"
            )
            noon = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
            conn.execute(
                """
                INSERT INTO tasks (task_id, task_name, state, created_at, started_at,
                                   completed_at, updated_at)
                SELECT %(day)s || '-' || i, 'synthetic', 'SUCCESS', %(noon)s, %(noon)s,
                       %(noon)s, %(noon)s
                FROM generate_series(1, %(tasks)s) AS i
                """,
                {"day": str(day), "noon": noon, "tasks": TASKS_PER_DAY},
            )
            conn.execute(
                """
                INSERT INTO lines (task_id, seq, ts, stream, message)
                SELECT %(day)s || '-' || (1 + i %% %(tasks)s), i, %(noon)s, 'stdout',
                       'synthetic line ' || i
                FROM generate_series(1, %(lines)s) AS i
                """,
                {"day": str(day), "noon": noon, "tasks": TASKS_PER_DAY, "lines": LINES_PER_DAY},
            )


def test_prune_drops_what_is_older_than_the_retention(database_url: str) -> None:
    fill(database_url)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "TASKLOG_DATABASE_URL": database_url,
        "TASKLOG_RETENTION_DAYS": "30",
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "tasklog", "prune"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    print(f"\nprune of {DAYS * LINES_PER_DAY} lines over {DAYS} days took {took:.2f}s")

    cutoff = datetime.now(UTC) - timedelta(days=30)
    with psycopg.connect(database_url) as conn:
        oldest_line = conn.execute("SELECT min(ts) FROM lines").fetchone()[0]
        oldest_task = conn.execute("SELECT min(created_at) FROM tasks").fetchone()[0]
        kept_lines = conn.execute("SELECT count(*) FROM lines").fetchone()[0]
        kept_tasks = conn.execute("SELECT count(*) FROM tasks").fetchone()[0]
    # Whole days go: nothing older than the day of the cutoff survives, nothing newer is touched.
    assert oldest_line >= datetime.combine(cutoff.date(), datetime.min.time(), UTC)
    assert oldest_task >= cutoff
    assert kept_lines >= 30 * LINES_PER_DAY
    assert kept_lines <= 31 * LINES_PER_DAY
    today = datetime.now(UTC).date()
    young_days = sum(
        1
        for back in range(DAYS)
        if datetime.combine(today - timedelta(days=back), datetime.min.time(), UTC)
        + timedelta(hours=12)
        >= cutoff
    )
    assert kept_tasks == young_days * TASKS_PER_DAY
    assert f"dropped {DAYS - kept_lines // LINES_PER_DAY} line partitions" in result.stdout

    again = subprocess.run(
        [sys.executable, "-m", "tasklog", "prune"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "dropped 0 line partitions, deleted 0 tasks" in again.stdout
