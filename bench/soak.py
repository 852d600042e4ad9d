"""Soak: N tasks x M lines through the whole system with K SSE clients following tasks.

A real prefork worker (demo.app, the capture shim), the collector, the API and Postgres and
Redis; every task prints M numbered lines. K SSE clients take the tasks in the order they were
sent, follow each to its ``end`` (resuming with Last-Event-ID when the server cuts them off),
then take the next. Recorded: lines sent, stored, duplicated and lost (per task, by content);
SSE lines received against expected, duplicated and missed; the peak resident memory of the
worker (main process and pool children), the collector and the API; the duration.

``python -m bench.soak`` (default 1,000 tasks x 1,000 lines, 200 clients) starts embedded
Postgres and Redis unless ``--database-url`` (a server whose user may create databases) and
``--redis-url`` are given. ``tests/integration/test_faults_api.py`` runs a small variant.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.common import Child, Databases, _status_kb, children, python, row, title, workdir
from bench.common import wait_for as bench_wait_for

PREFIX = "/tasklog"
TASK = "demo.print_lines"


@dataclass
class Report:
    tasks: int
    lines_per_task: int
    clients: int
    lines_sent: int = 0
    lines_stored: int = 0
    lines_duplicated: int = 0
    lines_lost: int = 0
    tasks_finished: int = 0
    sse_expected: int = 0
    sse_received: int = 0
    sse_duplicated: int = 0
    sse_missed: int = 0
    sse_wrong_text: int = 0
    sse_reconnects: int = 0
    sse_ends: int = 0
    rss_peak_mb: dict[str, float] = field(default_factory=dict)
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            self.lines_stored == self.lines_sent
            and not self.lines_duplicated
            and not self.lines_lost
            and self.sse_received == self.sse_expected
            and not self.sse_duplicated
            and not self.sse_missed
            and not self.sse_wrong_text
            and self.sse_ends == self.tasks
        )

    def print(self) -> None:
        title(
            f"soak: {self.tasks:,} tasks x {self.lines_per_task:,} lines, "
            f"{self.clients} SSE clients"
        )
        row("lines sent / stored", f"{self.lines_sent:,} / {self.lines_stored:,}")
        row("lines duplicated / lost", f"{self.lines_duplicated:,} / {self.lines_lost:,}")
        row("SSE lines expected / received", f"{self.sse_expected:,} / {self.sse_received:,}")
        row(
            "SSE duplicated / missed / wrong text",
            f"{self.sse_duplicated:,} / {self.sse_missed:,} / {self.sse_wrong_text:,}",
        )
        row(
            "SSE streams ended / resumed (Last-Event-ID)",
            f"{self.sse_ends:,} / {self.sse_reconnects:,}",
        )
        for name, mb in self.rss_peak_mb.items():
            row(f"peak RSS {name}", f"{mb:,.1f} MB")
        rate = self.lines_sent / self.duration_s if self.duration_s else 0
        row("duration", f"{self.duration_s:,.1f} s ({rate:,.0f} lines/s end to end)")
        row("verdict", "nothing lost, nothing duplicated" if self.ok else "FAILED")


# -- SSE clients -----------------------------------------------------------------------------


@dataclass
class Follow:
    """What one client saw of one task."""

    last: int = 0
    received: int = 0
    duplicated: int = 0
    missed: int = 0
    wrong_text: int = 0
    reconnects: int = 0
    ended: bool = False


async def follow_task(session: Any, base: str, task_id: str, timeout: float) -> Follow:
    """Follow one task to its end, resuming after a cut-off as a browser does."""
    seen = Follow()
    deadline = time.monotonic() + timeout
    while not seen.ended:
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {task_id}: no end after {timeout:g}s (at seq {seen.last})")
        headers = {"Last-Event-ID": str(seen.last)} if seen.last else {}
        async with session.get(f"{base}{PREFIX}/sse/task/{task_id}/", headers=headers) as resp:
            if resp.status != 200:
                raise RuntimeError(f"task {task_id}: HTTP {resp.status}: {await resp.text()}")
            async for raw in resp.content:
                if not raw.startswith(b"data:"):
                    continue
                event = json.loads(raw[5:])
                kind = event["type"]
                if kind == "new_log":
                    seq = event["id"]
                    if seq <= seen.last:
                        seen.duplicated += 1
                        continue
                    seen.missed += seq - seen.last - 1
                    seen.last = seq
                    seen.received += 1
                    if event["message"] != f"line {seq}":
                        seen.wrong_text += 1
                elif kind == "end":
                    seen.ended = True
                    break
        if not seen.ended:
            seen.reconnects += 1
    return seen


async def run_clients(base: str, task_ids: list[str], clients: int, timeout: float) -> list[Follow]:
    import aiohttp

    queue: asyncio.Queue[str] = asyncio.Queue()
    for task_id in task_ids:
        queue.put_nowait(task_id)
    results: list[Follow] = []
    client_timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
    connector = aiohttp.TCPConnector(limit=0)

    async def client(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            task_id = queue.get_nowait()
            results.append(await follow_task(session, base, task_id, timeout))

    async with aiohttp.ClientSession(timeout=client_timeout, connector=connector) as session:
        async with asyncio.TaskGroup() as group:
            for i in range(clients):
                group.create_task(client(session), name=f"sse-client-{i}")
    return results


# -- the system ------------------------------------------------------------------------------


def _peak_mb(pid: int) -> float:
    try:
        return _status_kb(pid, "VmHWM") / 1024
    except (OSError, KeyError):
        return 0.0


def _children_of(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def soak(
    database_url: str,
    redis_url: str,
    tasks: int,
    lines: int,
    clients: int,
    work: Path,
    *,
    concurrency: int = 2,
    timeout: float = 3600,
) -> Report:
    """Run the soak against a migrated database and a Redis database; both are only used."""
    from celery import Celery

    from tasklog.demo.embedded import free_port

    report = Report(tasks, lines, clients)
    spool = work / "spool"
    spool.mkdir(parents=True)
    logs = work / "logs"
    logs.mkdir()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    common = {
        "TASKLOG_DATABASE_URL": database_url,
        "TASKLOG_REDIS_URL": redis_url,
        "TASKLOG_LOG_LEVEL": "WARNING",
    }
    with children() as started:
        collector = Child(
            "collector",
            [python(), "-m", "tasklog", "collector"],
            {
                **common,
                "TASKLOG_SPOOL_DIR": str(spool),
                "TASKLOG_HOST": "soak",
                "TASKLOG_LOG_LEVEL": "INFO",
            },
            logs,
        )
        started.append(collector)
        collector.wait_for_log("following")
        api = Child(
            "api",
            [python(), "-m", "tasklog", "api"],
            {**common, "TASKLOG_API_PORT": str(port), "TASKLOG_LOG_LEVEL": "INFO"},
            logs,
        )
        started.append(api)
        api.wait_for_log("listening on")
        worker = Child(
            "worker",
            [
                python(),
                "-m",
                "celery",
                "-A",
                "tasklog.demo.app",
                "worker",
                "-P",
                "prefork",
                "-c",
                str(concurrency),
                "-l",
                "info",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                "soak@%h",
            ],
            {"TASKLOG_REDIS_URL": redis_url, "TASKLOG_SPOOL_DIR": str(spool)},
            logs,
        )
        started.append(worker)
        worker.wait_for_log("ready.")

        app = Celery("soak", broker=redis_url, set_as_current=False)
        started_at = time.monotonic()
        try:
            ids = [
                app.send_task(TASK, kwargs={"count": lines}, ignore_result=True).id
                for _ in range(tasks)
            ]
        finally:
            app.close()
        report.lines_sent = tasks * lines
        follows = asyncio.run(run_clients(base, ids, clients, timeout))
        bench_wait_for(
            lambda: _finished(database_url, ids) == tasks,
            timeout,
            "every task stored as finished",
            collector,
            interval=0.2,
        )
        report.duration_s = time.monotonic() - started_at

        pool = _children_of(worker.pid)
        report.rss_peak_mb = {
            "worker (main)": _peak_mb(worker.pid),
            f"worker (largest of {len(pool)} pool processes)": max(
                map(_peak_mb, pool), default=0.0
            ),
            "collector": _peak_mb(collector.pid),
            "API": _peak_mb(api.pid),
        }
    report.tasks_finished = _finished(database_url, ids)
    _count_stored(database_url, ids, lines, report)
    report.sse_expected = tasks * lines
    for seen in follows:
        report.sse_received += seen.received
        report.sse_duplicated += seen.duplicated
        report.sse_missed += seen.missed + (lines - seen.last)
        report.sse_wrong_text += seen.wrong_text
        report.sse_reconnects += seen.reconnects
        report.sse_ends += seen.ended
    return report


def _finished(database_url: str, ids: list[str]) -> int:
    from bench.common import scalar

    return int(
        scalar(
            database_url,
            "SELECT count(*) FROM tasks WHERE task_id = ANY(%s) AND state = 'SUCCESS'",
            [ids],
        )
    )


def _count_stored(database_url: str, ids: list[str], lines: int, report: Report) -> None:
    """Per task: rows, distinct messages, and messages that are not ``line 1..M``."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT task_id, count(*), count(DISTINCT message),"
            " count(*) FILTER (WHERE message <> 'line ' || seq) FROM lines"
            " WHERE task_id = ANY(%s) GROUP BY task_id",
            [ids],
        ).fetchall()
    per_task = {r[0]: r[1:] for r in rows}
    for task_id in ids:
        total, distinct, wrong = per_task.get(task_id, (0, 0, 0))
        report.lines_stored += total
        report.lines_duplicated += total - distinct + wrong
        report.lines_lost += lines - distinct


# -- command line ----------------------------------------------------------------------------


@contextmanager
def servers(args: argparse.Namespace, work: Path) -> Iterator[tuple[str, str]]:
    """A migrated database URL and a Redis URL: given ones, or embedded servers."""
    from collector.migrate import migrate
    from tasklog.demo.embedded_postgres import EmbeddedPostgres
    from tasklog.demo.embedded_redis import EmbeddedRedis

    with ExitStack() as stack:
        if args.database_url:
            databases = Databases(args.database_url)
            stack.callback(databases.close)
            database_url = databases.fresh()
        else:
            pg = stack.enter_context(EmbeddedPostgres(work / "pg", fast=True))
            import psycopg

            with psycopg.connect(pg.url(), autocommit=True) as conn:
                conn.execute("CREATE DATABASE soak")
            database_url = pg.url("soak")
            migrate(database_url)
        if args.redis_url:
            redis_url = args.redis_url
        else:
            redis_url = stack.enter_context(EmbeddedRedis(work / "redis")).url(db=0)
        yield database_url, redis_url


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", type=int, default=1000)
    p.add_argument("--lines", type=int, default=1000, help="lines per task")
    p.add_argument("--clients", type=int, default=200, help="SSE clients")
    p.add_argument("--concurrency", type=int, default=2, help="worker pool processes")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--database-url", help="a Postgres server URL (default: embedded)")
    p.add_argument("--redis-url", help="a Redis database URL (default: embedded)")
    p.add_argument("--json", help="also write the figures to this file")


def run(args: argparse.Namespace) -> Report:
    with workdir() as work, servers(args, work) as (database_url, redis_url):
        report = soak(
            database_url,
            redis_url,
            args.tasks,
            args.lines,
            args.clients,
            work / "run",
            concurrency=args.concurrency,
            timeout=args.timeout,
        )
    report.print()
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(report), indent=2))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    sys.exit(0 if run(parser.parse_args()).ok else 1)


if __name__ == "__main__":
    main()
