"""Retention at scale: `tasklog prune` on tens of millions of lines vs. deleting rows.

Fills a fresh database with `--days` days of lines (`--lines-per-day` each, in the day
partitions the collector makes), then times `tasklog prune` with a 30-day retention, which drops
whole partitions, against the row-by-row alternative: `DELETE` of one old day's lines, timed on
its own and multiplied by the number of days pruned.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from datetime import UTC, datetime, timedelta

from bench.common import Databases, python, row, scalar, title

RETENTION_DAYS = 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--days", type=int, default=40, help="days of synthetic data (40)")
    parser.add_argument(
        "--lines-per-day",
        type=int,
        default=500_000,
        help="lines per day (500,000: 20 million lines over 40 days)",
    )


def fill(url: str, days: int, per_day: int) -> None:
    import psycopg

    today = datetime.now(UTC).date()
    with psycopg.connect(url, autocommit=True) as conn:
        for back in range(days):
            day = today - timedelta(days=back)
            conn.execute(
                f"CREATE TABLE lines_{day:%Y%m%d} PARTITION OF lines FOR VALUES "
                f"FROM ('{day} 00:00:00+00') TO ('{day + timedelta(days=1)} 00:00:00+00')"
            )
            noon = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
            # 100 lines per task, as a busy worker host would leave them.
            conn.execute(
                """
                INSERT INTO tasks (task_id, task_name, state, created_at, started_at,
                                   completed_at, updated_at, line_count, last_seq)
                SELECT %(day)s || '-' || i, 'bench.synthetic', 'SUCCESS', %(noon)s, %(noon)s,
                       %(noon)s, %(noon)s, 100, 100
                FROM generate_series(1, %(tasks)s) AS i
                """,
                {"day": str(day), "noon": noon, "tasks": per_day // 100},
            )
            conn.execute(
                """
                INSERT INTO lines (task_id, seq, ts, stream, message)
                SELECT %(day)s || '-' || (1 + (i - 1) / 100), 1 + (i - 1) %% 100,
                       %(noon)s + (i %% 3600) * interval '1 second', 'stdout',
                       'processing batch ' || i || ' of the synthetic retention benchmark'
                FROM generate_series(1, %(lines)s) AS i
                """,
                {"day": str(day), "noon": noon, "lines": per_day},
            )
            print(f"  filled day {back + 1}/{days}", end="\r", flush=True)
        conn.execute("VACUUM ANALYZE lines")
        conn.execute("VACUUM ANALYZE tasks")
    print()


def run(args: argparse.Namespace) -> None:
    import psycopg

    title(
        f"retention: {args.days} days x {args.lines_per_day:,} lines, "
        f"TASKLOG_RETENTION_DAYS={RETENTION_DAYS}"
    )
    dbs = Databases(args.database_url)
    try:
        url = dbs.fresh()
        started = time.monotonic()
        fill(url, args.days, args.lines_per_day)
        total = scalar(url, "SELECT count(*) FROM lines")
        row("lines before", f"{total:,} (filled in {time.monotonic() - started:.0f} s)")

        # The alternative: delete an old day's rows one by one through the parent table, then
        # VACUUM so that the space can be used again (what dropping a partition gives at once).
        oldest = datetime.now(UTC).date() - timedelta(days=args.days - 1)
        t0 = time.monotonic()
        scalar(
            url,
            "WITH d AS (DELETE FROM lines WHERE ts >= %s AND ts < %s RETURNING 1) "
            "SELECT count(*) FROM d",
            (oldest, oldest + timedelta(days=1)),
        )
        deleted = time.monotonic() - t0
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"VACUUM lines_{oldest:%Y%m%d}")
        one_day = time.monotonic() - t0
        pruned_days = args.days - RETENTION_DAYS - 1

        env = {
            "TASKLOG_DATABASE_URL": url,
            "TASKLOG_RETENTION_DAYS": str(RETENTION_DAYS),
            "PATH": "/usr/bin:/bin",
        }
        t0 = time.monotonic()
        out = subprocess.run(
            [python(), "-m", "tasklog", "prune"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        prune = time.monotonic() - t0
        after = scalar(url, "SELECT count(*) FROM lines")
        row("tasklog prune", f"{prune:.2f} s", out)
        row("lines after", f"{after:,} ({total - after:,} gone)")
        row(
            "DELETE + VACUUM of one day's lines",
            f"{one_day:.2f} s",
            f"DELETE {deleted:.2f} s; x {pruned_days} days = {one_day * pruned_days:.1f} s",
        )
        row("ratio", f"prune is {one_day * pruned_days / prune:,.0f}x faster than DELETE")
    finally:
        dbs.close()
