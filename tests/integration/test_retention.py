"""Retention: old partitions are dropped whole, old tasks deleted; recent data untouched."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg

from tests.helpers import ProcessFactory, pg_rows, wait_for

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
        oldest_line = conn.execute("SELECT min(ts) FROM lines").fetchall()[0][0]
        oldest_task = conn.execute("SELECT min(created_at) FROM tasks").fetchall()[0][0]
        kept_lines = conn.execute("SELECT count(*) FROM lines").fetchall()[0][0]
        kept_tasks = conn.execute("SELECT count(*) FROM tasks").fetchall()[0][0]
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


def test_the_collector_prunes_on_its_own_schedule(
    procs: ProcessFactory, database_url: str, spool_dir: Path
) -> None:
    """No `tasklog prune` needed: the running collector prunes every TASKLOG_PRUNE_INTERVAL."""
    proc = procs.collector(
        database_url=database_url,
        spool_dir=spool_dir,
        ready="following",
        env={"TASKLOG_RETENTION_DAYS": "30", "TASKLOG_PRUNE_INTERVAL": "0.5"},
    )
    today = datetime.now(UTC).date()
    # Each round's old data is made once the previous round's was pruned: the second round
    # can only go by a prune after the collector's first.
    for round_ in (1, 2):
        day = today - timedelta(days=40 + round_)
        partition = f"lines_{day:%Y%m%d}"
        noon = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
        # One transaction: a prune sees all of a round's old data or none of it.
        with psycopg.connect(database_url) as conn:
            conn.execute(
                f"CREATE TABLE {partition} PARTITION OF lines FOR VALUES "
                f"FROM ('{day} 00:00:00+00') TO ('{day + timedelta(days=1)} 00:00:00+00')"
            )
            conn.execute(
                "INSERT INTO tasks (task_id, state, created_at, completed_at, updated_at) "
                "VALUES (%(old)s, 'SUCCESS', %(t)s, %(t)s, %(t)s), (%(young)s, 'SUCCESS', now(), "
                "now(), now())",
                {"old": f"old-{round_}", "young": f"young-{round_}", "t": noon},
            )
            conn.execute(
                "INSERT INTO lines (task_id, seq, ts, stream, message) "
                "VALUES (%s, 1, %s, 'stdout', 'old line')",
                (f"old-{round_}", noon),
            )

        def pruned(partition: str = partition, round_: int = round_) -> bool:
            tables = pg_rows(database_url, "SELECT to_regclass(%s)", (partition,))
            tasks = pg_rows(database_url, "SELECT task_id FROM tasks ORDER BY task_id")
            return tables == [(None,)] and (f"old-{round_}",) not in tasks

        wait_for(pruned, timeout=20, message=f"round {round_} pruned by the collector")
        assert pg_rows(
            database_url, "SELECT count(*) FROM tasks WHERE task_id = %s", (f"young-{round_}",)
        ) == [(1,)]

    # The collector says what it pruned (a round's partition and task may go in two prunes,
    # and each line is logged right after the commit the checks above saw).
    def logged() -> tuple[int, int]:
        found = re.findall(
            r"retention: dropped (\d+) line partitions, deleted (\d+) tasks", proc.log_text()
        )
        return sum(int(d) for d, _ in found), sum(int(t) for _, t in found)

    wait_for(lambda: logged() == (2, 2), timeout=10, message="both rounds' prunes logged")
    assert proc.alive
