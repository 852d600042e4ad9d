"""Benchmark 5: task list and task detail latency with 1M tasks and 10M lines in the database.

The database (``tasklog_bench_10m`` on the server of ``--database-url``) is built once with
``generate_series`` and kept between runs (``--rebuild`` makes it again): 1,000,000 tasks over
the last 30 days (realistic states, names, hosts; retried tasks with a later ``started_at``),
10,000,000 lines in the day partitions the collector would create (``lines_YYYYMMDD``):
90,000 tasks of 100 lines and 1,000 of 1,000 lines; the other tasks printed nothing.
Then ``python -m tasklog api`` serves it and this process times sequential requests (one
keep-alive connection: latency, not throughput).
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import time
import urllib.parse
from pathlib import Path

from bench.common import (
    Child,
    Figure,
    children,
    percentile,
    python,
    row,
    scalar,
    title,
    verdict,
    wait_for,
    with_database,
    workdir,
)

DB_NAME = "tasklog_bench_10m"
TARGET_P99_MS = 20.0
TASKS = 1_000_000
DAYS = 30
SMALL_TASKS, SMALL_LINES = 90_000, 100
BIG_TASKS, BIG_LINES = 1_000, 1_000


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=300, help="timed requests per kind per run")
    p.add_argument("--runs", type=int, default=3, help="runs (each times every kind)")
    p.add_argument("--rebuild", action="store_true", help=f"drop and rebuild {DB_NAME}")


def run(args: argparse.Namespace) -> dict[str, Figure]:
    title("API latency: task list and detail at 1M tasks / 10M lines")
    url = with_database(args.database_url, DB_NAME)
    _ensure_database(args.database_url, url, args.rebuild)
    from collector.migrate import migrate

    applied = migrate(url)  # a migration added since the build applies to the cached copy
    if applied:
        print(f"  applied {', '.join(applied)}", flush=True)
    kinds = _kinds(url)
    runs: dict[str, list[list[float]]] = {name: [] for name in kinds}
    with workdir() as tmp, children() as procs:
        from tasklog.demo.embedded import free_port

        port = free_port()
        api = Child(
            "api",
            [python(), "-m", "tasklog", "api"],
            {
                "TASKLOG_DATABASE_URL": url,
                "TASKLOG_API_PORT": str(port),
                "TASKLOG_LOG_LEVEL": "warning",
            },
            Path(tmp),
        )
        procs.append(api)
        wait_for(
            lambda: _get(port, "/tasklog/healthz", quiet=True) is not None,
            60,
            "the API to answer",
            api,
        )
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for _ in range(args.runs):
            for name, paths in kinds.items():
                for path in paths[:20]:  # warm-up: connections of the pool, plans
                    _timed(conn, path)
                runs[name].append(
                    [_timed(conn, random.choice(paths)) for _ in range(args.requests)]
                )
        conn.close()
    figures = {}
    for name in kinds:
        for p in (50, 99):
            fig = Figure(f"{name}, p{p}", "ms", [percentile(r, p) for r in runs[name]])
            note = (
                f"target p99 <= {TARGET_P99_MS:g} ms: {verdict(fig.median <= TARGET_P99_MS)}"
                if p == 99
                else ""
            )
            row(fig.name, fig.text(2), note)
            figures[f"{name} p{p}"] = fig
    return figures


def _timed(conn: http.client.HTTPConnection, path: str) -> float:
    started = time.perf_counter()
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    elapsed = (time.perf_counter() - started) * 1000
    if response.status != 200:
        raise RuntimeError(f"GET {path}: {response.status} {body[:200]!r}")
    return elapsed


def _get(port: int, path: str, quiet: bool = False) -> dict[str, object] | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", path)
        response = conn.getresponse()
        data = json.loads(response.read())
        conn.close()
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        if quiet:
            return None
        raise


def _kinds(url: str) -> dict[str, list[str]]:
    """The requests of each kind (several paths, picked at random, so no single row is hot)."""
    import psycopg

    from api.params import encode_cursor

    base = "/tasklog/api/tasks/"
    rng = random.Random(7)
    with psycopg.connect(url, autocommit=True) as conn:
        deep = conn.execute(
            "SELECT created_at, task_id FROM tasks ORDER BY created_at DESC, task_id DESC"
            " OFFSET 500000 LIMIT 50"
        ).fetchall()
        small = [
            r[0]
            for r in conn.execute(
                "SELECT task_id FROM tasks WHERE line_count = %s LIMIT 5000", (SMALL_LINES,)
            )
        ]
        big = [
            r[0]
            for r in conn.execute(
                "SELECT task_id FROM tasks WHERE line_count = %s LIMIT 500", (BIG_LINES,)
            )
        ]
        names = [r[0] for r in conn.execute("SELECT DISTINCT task_name FROM tasks")]
    rng.shuffle(small)
    return {
        "list, first page": [base],
        "list, state+name filter": [
            f"{base}?state=FAILURE&name={urllib.parse.quote(n)}" for n in names
        ]
        + [f"{base}?state=STARTED&state=RETRY&name={urllib.parse.quote(n)}" for n in names],
        "list, deep keyset page (offset 500k) via cursor": [
            f"{base}?cursor={urllib.parse.quote(encode_cursor(at, tid))}" for at, tid in deep
        ],
        "detail, first page of 100-line tasks": [f"{base}{t}/" for t in small],
        "detail, page after_seq=500 of 1000-line tasks": [f"{base}{t}/?after_seq=500" for t in big],
        "detail, page after_seq=500, limit=100": [
            f"{base}{t}/?after_seq=500&limit=100" for t in big
        ],
    }


# -- the database ------------------------------------------------------------------------------


def _ensure_database(server_url: str, url: str, rebuild: bool) -> None:
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as admin:
        exists = admin.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)
        ).fetchone()
        if exists and not rebuild:
            try:
                done = scalar(url, "SELECT value FROM bench_meta WHERE key = 'built'")
            except psycopg.Error:
                done = None
            if done:
                print(f"  reusing {DB_NAME} (built {done}; --rebuild to make it again)", flush=True)
                return
        admin.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'.encode())
        admin.execute(f'CREATE DATABASE "{DB_NAME}"'.encode())
    _build(url)


_BUILD = [
    # Tasks: the newest first over DAYS days; a state mix like a busy queue's.
    f"""
    INSERT INTO tasks (task_id, task_name, state, progress, host, worker, pid, retries,
                       created_at, started_at, completed_at, runtime, exc_type, exc_message,
                       line_count, last_seq, updated_at)
    SELECT md5(i::text)::uuid::text,
           (ARRAY['app.tasks.send_email', 'app.tasks.resize_image', 'app.tasks.sync_orders',
                  'app.tasks.build_report', 'app.tasks.import_csv', 'app.tasks.charge_card',
                  'app.tasks.refresh_cache', 'app.tasks.export_pdf', 'app.tasks.notify_slack',
                  'app.tasks.cleanup', 'billing.invoice', 'billing.reconcile',
                  'search.reindex', 'ml.score_batch', 'etl.load_day', 'etl.transform'])
               [1 + (hashint % 16)],
           CASE WHEN r < 0.86 THEN 'SUCCESS' WHEN r < 0.93 THEN 'FAILURE'
                WHEN r < 0.95 THEN 'PENDING' WHEN r < 0.965 THEN 'STARTED'
                WHEN r < 0.975 THEN 'PROGRESS' WHEN r < 0.985 THEN 'RETRY'
                WHEN r < 0.993 THEN 'REVOKED' ELSE 'LOST' END,
           NULL,
           'worker-' || (hashint % 8) || '.example.net',
           'celery@worker-' || (hashint % 8),
           1000 + hashint % 30000,
           CASE WHEN r >= 0.975 AND r < 0.985 THEN 1 + hashint % 3 ELSE 0 END,
           created, created + interval '50 ms',
           CASE WHEN r < 0.93 OR r >= 0.985 THEN created + interval '6 s' END,
           CASE WHEN r < 0.93 THEN 6.0 END,
           CASE WHEN r >= 0.86 AND r < 0.93 THEN 'ValueError' END,
           CASE WHEN r >= 0.86 AND r < 0.93 THEN 'bad input in row ' || i END,
           0, 0, created + interval '6 s'
    FROM (
        SELECT i, abs(hashtext(i::text)) AS hashint, (abs(hashtext('s' || i)) % 100000) / 1e5 AS r,
               now() - (i * interval '{DAYS * 86400 / TASKS} s') AS created
        FROM generate_series(1, {TASKS}) AS i
    ) AS g
    """,
    # Retried tasks ran again later: a newer started_at on the same row.
    "UPDATE tasks SET started_at = created_at + interval '2 min' WHERE retries > 0",
    # Which tasks printed: every 10th task 100 lines (90,000 of them), every 1,000th 1,000.
    f"""
    CREATE TEMP TABLE printing AS
    SELECT task_id, created_at,
           CASE WHEN n % 1000 = 0 THEN {BIG_LINES} ELSE {SMALL_LINES} END AS lines
    FROM (SELECT task_id, created_at, row_number() OVER (ORDER BY task_id) AS n FROM tasks) t
    WHERE n % 10 = 0 AND (n % 1000 = 0 OR n / 10 <= {SMALL_TASKS + BIG_TASKS})
    """,
    "UPDATE tasks SET line_count = p.lines, last_seq = p.lines FROM printing p"
    " WHERE tasks.task_id = p.task_id",
]

_LINES = """
INSERT INTO lines (task_id, seq, ts, stream, level, message)
SELECT p.task_id, s, p.created_at + interval '50 ms' + s * interval '20 ms',
       CASE WHEN s %% 17 = 0 THEN 'stderr' ELSE 'stdout' END,
       CASE WHEN s %% 17 = 0 THEN 'WARNING' END,
       '[' || lpad(s::text, 5, '0') || '] ' ||
       left('processing batch item ' || s || ' of ' || p.lines || ': user order invoice '
            || md5(p.task_id || s) || ' retry connection timeout ok done records rows elapsed '
            || (s * 7 %% 1000) || ' ms cache hit upload chunk payload request response status',
            40 + (s * 37 %% 160))
FROM printing p, generate_series(1, p.lines) AS s
WHERE p.created_at >= %(lo)s AND p.created_at < %(hi)s
"""


def _build(url: str) -> None:
    import psycopg
    from psycopg import sql

    from collector.migrate import migrate

    started = time.monotonic()
    migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET maintenance_work_mem = '256MB'")
        for statement in _BUILD:
            conn.execute(statement.encode())
        print(f"  tasks built ({time.monotonic() - started:.0f}s)", flush=True)
        first, last = conn.execute(
            "SELECT min(created_at)::date, (max(created_at) + interval '1 day')::date FROM tasks"
        ).fetchone()  # type: ignore[misc]
        day = first
        from datetime import timedelta

        days = []
        while day <= last:
            days.append(day)
            day += timedelta(days=1)
        for day in days:  # named and bounded as the collector makes them (collector/retention.py)
            nxt = day + timedelta(days=1)
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} PARTITION OF lines FOR VALUES FROM ({}) TO ({})"
                ).format(
                    sql.Identifier(f"lines_{day:%Y%m%d}"),
                    sql.Literal(f"{day.isoformat()} 00:00:00+00"),
                    sql.Literal(f"{nxt.isoformat()} 00:00:00+00"),
                )
            )
        for day in days:  # the lines of the tasks created that day, a day at a time
            nxt = day + timedelta(days=1)
            conn.execute(
                _LINES.encode(),
                {"lo": f"{day.isoformat()} 00:00:00+00", "hi": f"{nxt.isoformat()} 00:00:00+00"},
            )
        print(f"  lines built ({time.monotonic() - started:.0f}s)", flush=True)
        conn.execute("VACUUM ANALYZE")
        conn.execute("CREATE TABLE bench_meta (key text PRIMARY KEY, value text)")
        count = conn.execute("SELECT count(*) FROM lines").fetchone()[0]  # type: ignore[index]
        tasks = conn.execute("SELECT count(*) FROM tasks").fetchone()[0]  # type: ignore[index]
        conn.execute(
            "INSERT INTO bench_meta VALUES ('built', now()::text), ('lines', %s), ('tasks', %s)",
            (str(count), str(tasks)),
        )
    print(
        f"  built {DB_NAME}: {tasks:,} tasks, {count:,} lines in {time.monotonic() - started:.0f}s",
        flush=True,
    )
