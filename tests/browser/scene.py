"""A fixed set of tasks, lines and a collector, written straight into a test database.

The layout and screenshot tests need pages that look the same on every run: fixed ids, fixed
times (around `T0`), every kind of output the pages show (a running task, a failure with its
traceback, a retried task, a huge one, a workflow, a task that logs, a custom state, long
lines, ANSI colours, CI-style groups). Rows are written as the collector writes them (the
run-tracking trigger fills ``task_runs``); nothing is published, so the pages read Postgres.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

#: The scene's "now": the browser's clock is fixed here, the newest task starts just before.
T0 = datetime(2026, 3, 2, 9, 30, 0, tzinfo=UTC)
NOW = T0 + timedelta(minutes=6)
#: Lines of the huge task (the benchmark in bench/ uses 100,000).
HUGE_LINES = 20_000

RUNNING = "resize-images-c810"
FAILED = "build-report-91c2"
RETRIED = "sync-accounts-4be0"
LOGGING = "ingest-orders-7f3a"
HUGE = "export-catalog-0001"
CUSTOM = "await-approval-5d21"
ROOT = "wf-extract-a100"
WORKFLOW = (ROOT, "wf-transform-0-a101", "wf-transform-1-a102", "wf-load-a103")
#: A task of the workflow that was retried once (its two runs on two hosts).
WF_RETRIED = "wf-transform-2-a104"

TRACEBACK = """Traceback (most recent call last):
  File "/usr/lib/python3/dist-packages/celery/app/trace.py", line 453, in trace_task
    R = retval = fun(*args, **kwargs)
  File "/srv/app/reports/tasks.py", line 41, in build_report
    totals = summarise(rows)
  File "/srv/app/reports/summary.py", line 17, in summarise
    raise ValueError(f"row {i}: amount is not a number: {row['amount']!r}")
ValueError: row 1873: amount is not a number: 'n/a'
"""


@dataclass
class Line:
    dt: float  # seconds after the task's start
    message: str
    stream: str = "stdout"
    level: str | None = None


@dataclass
class Task:
    task_id: str
    name: str
    state: str
    start: float  # seconds after T0
    runtime: float | None = None
    host: str = "worker-1"
    progress: float | None = None
    progress_message: str | None = None
    parent_id: str | None = None
    root_id: str | None = None
    exc_type: str | None = None
    exc_message: str | None = None
    traceback: str | None = None
    lines: list[Line] = field(default_factory=list)


def logging_lines() -> list[Line]:
    out = [
        Line(0.01, "::group::Fetch orders"),
        Line(0.02, "GET /orders?page=1 -> 200 (250 orders)", "log", "INFO"),
        Line(0.35, "GET /orders?page=2 -> 200 (250 orders)", "log", "INFO"),
        Line(0.71, "GET /orders?page=3 -> 200 (112 orders)", "log", "INFO"),
        Line(0.72, "::endgroup::"),
        Line(0.80, "::group::Validate"),
        Line(0.81, "order 1042: currency missing, assuming EUR", "log", "WARNING"),
        Line(0.90, "\x1b[32m✔\x1b[0m 611 orders valid, \x1b[33m1 fixed\x1b[0m"),
        Line(0.91, "::endgroup::"),
        Line(1.20, "stored 612 orders in 3 batches"),
        Line(1.21, "a long line without spaces: " + "0123456789abcdef" * 24),
        Line(1.30, "done: 612 orders ingested", "log", "INFO"),
    ]
    return out


def scene() -> list[Task]:
    tasks = [
        Task(
            RUNNING,
            "images.resize_all",
            "PROGRESS",
            300,
            progress=42,
            progress_message="resizing 420/1000",
            lines=[
                Line(i * 0.5, f"resized img_{i:04d}.jpg (2400x1600 -> 1200x800)") for i in range(40)
            ],
        ),
        Task(
            FAILED,
            "reports.build_report",
            "FAILURE",
            240,
            4.2,
            exc_type="ValueError",
            exc_message="row 1873: amount is not a number: 'n/a'",
            traceback=TRACEBACK,
            lines=[
                Line(0.1, "loading rows from warehouse"),
                Line(0.2, "::group::Summarise rows"),
                Line(1.5, "1,872 rows summed"),
                Line(4.1, "row 1873 is malformed: {'amount': 'n/a'}", "stderr"),
                Line(4.15, "failed to build report", "log", "ERROR"),
            ],
        ),
        Task(LOGGING, "orders.ingest", "SUCCESS", 180, 1.31, lines=logging_lines()),
        Task(
            CUSTOM,
            "deploy.await_approval",
            "AWAITING_APPROVAL",
            150,
            lines=[Line(0.2, "waiting for a reviewer to approve release 4.2")],
        ),
        Task(
            HUGE,
            "catalog.export",
            "SUCCESS",
            60,
            38.5,
            host="worker-2",
            lines=[
                Line(
                    i * 38.5 / HUGE_LINES,
                    f"exported product {i:06d}"
                    + (" ERROR: price missing" if i == HUGE_LINES // 2 else ""),
                    "stderr" if i == HUGE_LINES // 2 else "stdout",
                )
                for i in range(1, HUGE_LINES + 1)
            ],
        ),
        Task(
            ROOT,
            "etl.extract",
            "SUCCESS",
            0,
            2.0,
            root_id=ROOT,
            lines=[Line(0.5, "extracted 3 files"), Line(1.9, "handing off to transform")],
        ),
        Task(
            WORKFLOW[1],
            "etl.transform",
            "SUCCESS",
            2.1,
            3.0,
            parent_id=ROOT,
            root_id=ROOT,
            lines=[Line(0.3 + i, f"transform-0 chunk {i}") for i in range(3)],
        ),
        Task(
            WORKFLOW[2],
            "etl.transform",
            "SUCCESS",
            2.2,
            4.1,
            host="worker-2",
            parent_id=ROOT,
            root_id=ROOT,
            lines=[Line(0.4 + i, f"transform-1 chunk {i}") for i in range(4)],
        ),
        Task(
            WORKFLOW[3],
            "etl.load",
            "SUCCESS",
            6.5,
            1.2,
            parent_id=WORKFLOW[2],
            root_id=ROOT,
            lines=[Line(0.2, "loaded 7 chunks into warehouse")],
        ),
    ]
    return tasks


#: The retried task: a first run that failed and was retried, then a second that succeeded.
RETRY_RUNS = (
    (
        200.0,
        2.0,
        [Line(0.1, "connecting to accounts API"), Line(1.9, "timeout after 2 s", "stderr")],
    ),
    (215.0, 1.5, [Line(0.1, "connecting to accounts API"), Line(1.4, "synced 318 accounts")]),
)
WF_RETRY_RUNS = (
    (2.3, 1.0, [Line(0.5, "transform-2: source busy", "stderr")]),
    (4.0, 2.0, [Line(0.3, "transform-2 chunk 0"), Line(1.8, "transform-2 chunk 1")]),
)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def copy_lines(
    conn: psycopg.AsyncConnection[Any], task_id: str, start: float, lines: list[Line], seq: int
) -> int:
    async with conn.cursor().copy(
        "COPY lines (task_id, seq, ts, stream, level, message) FROM STDIN"
    ) as copy:
        for line in lines:
            seq += 1
            ts = at(start + line.dt)
            await copy.write_row((task_id, seq, ts, line.stream, line.level, line.message))
    return seq


async def build(database_url: str) -> None:
    """Writes the scene into the (migrated, empty) database."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("CREATE TABLE IF NOT EXISTS lines_scene PARTITION OF lines DEFAULT")
        for t in scene():
            created = at(t.start - 0.05)
            await conn.execute(
                "INSERT INTO tasks (task_id, task_name, state, host, worker, pid, parent_id,"
                " root_id, created_at, started_at, updated_at) VALUES"
                " (%s, %s, 'STARTED', %s, %s, 4242, %s, %s, %s, %s, %s)",
                (
                    t.task_id,
                    t.name,
                    t.host,
                    "celery@" + t.host,
                    t.parent_id,
                    t.root_id,
                    created,
                    at(t.start),
                    created,
                ),
            )
            last = await copy_lines(conn, t.task_id, t.start, t.lines, 0)
            finished = t.runtime is not None
            await conn.execute(
                "UPDATE tasks SET state = %s, progress = %s, progress_message = %s,"
                " completed_at = %s, runtime = %s, exc_type = %s, exc_message = %s,"
                " traceback = %s, line_count = %s, last_seq = %s, updated_at = %s"
                " WHERE task_id = %s",
                (
                    t.state,
                    100 if t.state == "SUCCESS" else t.progress,
                    t.progress_message,
                    at(t.start + t.runtime) if finished and t.runtime is not None else None,
                    t.runtime,
                    t.exc_type,
                    t.exc_message,
                    t.traceback,
                    last,
                    last,
                    at(t.start + (t.runtime or 0)),
                    t.task_id,
                ),
            )
        await retried(conn, RETRIED, "accounts.sync", RETRY_RUNS, RETRIED, None)
        await retried(conn, WF_RETRIED, "etl.transform", WF_RETRY_RUNS, ROOT, ROOT)
        await conn.execute(
            "INSERT INTO collectors (host, spool_dir, pid, version, started_at, heartbeat_at,"
            " backlog_files, backlog_bytes, stats) VALUES"
            " ('worker-1', '/var/spool/tasklog', 811, '0.1.0', %s, now(), 3, 12300000, %s)",
            (
                at(-3600),
                '{"lines": 1204518, "batches": 9120, "corrupt": 0, "lost": 0, "vanished": 0,'
                ' "store_failures": 2, "files_done": 4410, "quarantined": 1, "status": "following",'
                ' "truncated": 0, "skipped_bytes": 0, "spool_free_bytes": 41200000000,'
                ' "spool_full": false, "quarantine_dir": "/var/spool/tasklog/quarantine"}',
            ),
        )


async def retried(
    conn: psycopg.AsyncConnection[Any],
    task_id: str,
    name: str,
    runs: tuple[tuple[float, float, list[Line]], ...],
    root_id: str,
    parent_id: str | None,
) -> None:
    """A task retried once, run by run, as the collector would store it (the trigger records
    the runs: a new ``retries`` value starts one): the first run on worker-1, the second on
    worker-2."""
    (s1, r1, l1), (s2, r2, l2) = runs
    await conn.execute(
        "INSERT INTO tasks (task_id, task_name, state, host, worker, pid, root_id, parent_id,"
        " created_at, started_at, updated_at) VALUES (%s, %s, 'STARTED', 'worker-1',"
        " 'celery@worker-1', 4242, %s, %s, %s, %s, %s)",
        (task_id, name, root_id, parent_id, at(s1 - 0.05), at(s1), at(s1)),
    )
    last = await copy_lines(conn, task_id, s1, l1, 0)
    await conn.execute(
        "UPDATE tasks SET state = 'RETRY', line_count = %s, last_seq = %s, completed_at = %s,"
        " runtime = %s, exc_type = 'TimeoutError', exc_message = 'accounts API: 2 s',"
        " updated_at = %s WHERE task_id = %s",
        (last, last, at(s1 + r1), r1, at(s1 + r1), task_id),
    )
    await conn.execute(
        "UPDATE tasks SET state = 'STARTED', retries = 1, host = 'worker-2',"
        " worker = 'celery@worker-2', started_at = %s, completed_at = NULL, runtime = NULL,"
        " exc_type = NULL, exc_message = NULL, updated_at = %s WHERE task_id = %s",
        (at(s2), at(s2), task_id),
    )
    last = await copy_lines(conn, task_id, s2, l2, last)
    await conn.execute(
        "UPDATE tasks SET state = 'SUCCESS', progress = 100, line_count = %s, last_seq = %s,"
        " completed_at = %s, runtime = %s, updated_at = %s WHERE task_id = %s",
        (last, last, at(s2 + r2), r2, at(s2 + r2), task_id),
    )


async def heartbeat(database_url: str) -> None:
    """The scene's collector reports now (the diagnostic page marks a silent one)."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("UPDATE collectors SET heartbeat_at = now()")
