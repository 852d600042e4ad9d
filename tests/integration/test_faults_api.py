"""The API side of the fault matrix: Redis down when the collector and the API start, Redis
stopped mid-stream and started again, with the real worker, collector and API processes.

The worker's broker is the shared test Redis; the collector and the API publish and subscribe
through a dedicated `EmbeddedRedis` that each test stops and starts for real, so a shared
server is never stopped.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tasklog.demo.embedded_redis import EmbeddedRedis
from tests.helpers import Proc, ProcessFactory, free_port, pg_rows, wait_for
from tests.integration.api_support import (
    PREFIX,
    SSEReader,
    follow,
    http,
    metric,
    seqs,
    start_api,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


# -- helpers -------------------------------------------------------------------------------------


async def health(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    response = await session.get(f"{base}{PREFIX}/healthz")
    assert response.status == 200
    body: dict[str, Any] = await response.json()
    return body


async def until(predicate: Any, message: str, timeout: float = 30) -> None:
    """Wait (polling, with a deadline) until the async `predicate` holds."""
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.1)
    del message  # for the reader: what the wait is for


def last_seq(database_url: str, task_id: str) -> int:
    rows = pg_rows(database_url, "SELECT last_seq FROM tasks WHERE task_id = %s", (task_id,))
    return int(rows[0][0]) if rows else 0


async def wait_stored(database_url: str, task_id: str, seq: int, timeout: float = 60) -> None:
    await asyncio.to_thread(
        wait_for,
        lambda: last_seq(database_url, task_id) >= seq,
        timeout,
        0.05,
        f"task {task_id} stored up to seq {seq}",
    )


async def wait_log(proc: Proc, needle: str, timeout: float = 30) -> None:
    await asyncio.to_thread(
        wait_for, lambda: needle in proc.log_text(), timeout, 0.05, f"{proc.name} to log {needle!r}"
    )


def assert_every_line_once(events: list[Any], count: int, who: str) -> None:
    got = seqs(events)
    assert got == list(range(1, count + 1)), (
        f"{who}: {len(got)} lines, first gaps/dups near "
        f"{[s for i, s in enumerate(got) if s != i + 1][:5]}"
    )
    messages = [e.data["message"] for e in events if e.type == "new_log"]
    assert messages == [f"line {i}" for i in range(1, count + 1)], who
    assert events[-1].type == "end", who


PAUSED = "Redis unreachable, live updates paused"
RESUMED = "live updates resumed"


# -- Redis down at start -------------------------------------------------------------------------


async def test_redis_down_when_collector_and_api_start(
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
    tmp_path: Path,
) -> None:
    live = EmbeddedRedis(tmp_path / "live-redis", port=free_port())  # not started yet
    try:
        collector = procs.collector(
            database_url=database_url, redis_url=live.url(), spool_dir=spool_dir, ready="following"
        )
        _, base = start_api(procs, database_url, live.url())
        procs.worker(redis_url=redis_url, spool_dir=spool_dir, pool="threads", concurrency=2)
        count = 150
        async with http() as session:
            report = await health(session, base)
            assert report["status"] == "degraded"
            assert report["postgres"]["ok"] is True
            assert report["redis"]["ok"] is False and report["redis"]["subscribed"] is False

            # Storage goes on and streams poll Postgres: every line, once, in order; the task
            # list's stream sees the task finish.
            listing = await session.get(f"{base}{PREFIX}/sse/tasks/")
            assert listing.status == 200
            task_list = SSEReader(listing)
            await task_list.until(lambda e: e.type == "connected")
            task = celery_client.send_task(
                "demo.print_lines", kwargs={"count": count, "delay": 0.005}
            )
            async with follow(session, base, task.id) as stream:
                events = await stream.rest(timeout=60)
            assert_every_line_once(events, count, "client while Redis is down")
            await task_list.until(
                lambda e: (
                    e.type == "status"
                    and e.data["task_id"] == task.id
                    and e.data["status"] == "SUCCESS"
                )
            )
            listing.close()
            await wait_log(collector, PAUSED)
            assert await metric(session, base, "tasklog_api_redis_live") == 0

            # Redis comes: the hub subscribes, the collector publishes again.
            await asyncio.to_thread(live.start)

            async def subscribed() -> bool:
                return bool((await health(session, base))["redis"]["subscribed"])

            await until(subscribed, "the API's hub subscribed")
            assert (await health(session, base))["status"] == "ok"
            assert await metric(session, base, "tasklog_api_redis_live") == 1
            pushed_before = await metric(
                session, base, 'tasklog_api_redis_messages_total{channel="lines"}'
            )
            task2 = celery_client.send_task(
                "demo.print_lines", kwargs={"count": count, "delay": 0.005}
            )
            async with follow(session, base, task2.id) as stream:
                events2 = await stream.rest(timeout=60)
            assert_every_line_once(events2, count, "client after Redis came")
            await wait_log(collector, RESUMED)
            # The lines reached the API through Redis this time, not only through polling.
            pushed_after = await metric(
                session, base, 'tasklog_api_redis_messages_total{channel="lines"}'
            )
            assert pushed_after > pushed_before
        assert collector.log_text().count(PAUSED) == 1
    finally:
        procs.stop_all()
        live.stop()


# -- Redis stopped mid-stream --------------------------------------------------------------------


async def test_redis_stopped_mid_stream_and_restarted(
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
    tmp_path: Path,
) -> None:
    live = EmbeddedRedis(tmp_path / "live-redis", port=free_port())
    live.start()
    try:
        collector = procs.collector(
            database_url=database_url, redis_url=live.url(), spool_dir=spool_dir, ready="following"
        )
        _, base = start_api(procs, database_url, live.url())
        procs.worker(redis_url=redis_url, spool_dir=spool_dir, pool="threads", concurrency=2)
        count = 400
        async with http() as session:

            async def subscribed() -> bool:
                return bool((await health(session, base))["redis"]["subscribed"])

            await until(subscribed, "the API's hub subscribed")
            reconnects_before = await metric(session, base, "tasklog_api_redis_reconnects_total")
            task = celery_client.send_task(
                "demo.print_lines", kwargs={"count": count, "delay": 0.01}
            )
            clients: dict[str, list[Any]] = {}

            async def client(name: str, join_at: int) -> None:
                await wait_stored(database_url, task.id, join_at)
                async with follow(session, base, task.id) as stream:
                    clients[name] = await stream.rest(timeout=90)

            # One client from the start, one that joins before the outage, one during it.
            readers = [
                asyncio.create_task(client("early", 0), name="early"),
                asyncio.create_task(client("before", 30), name="before"),
                asyncio.create_task(client("during", 150), name="during"),
            ]
            await wait_stored(database_url, task.id, 60)
            await asyncio.to_thread(live.stop)

            async def not_subscribed() -> bool:
                return not (await health(session, base))["redis"]["subscribed"]

            await until(not_subscribed, "the API's hub noticed the outage")
            await wait_log(collector, PAUSED)
            await wait_stored(database_url, task.id, 200)  # stored while Redis is down
            await asyncio.to_thread(live.start)  # the same port: both come back
            await until(subscribed, "the API's hub subscribed again")
            await asyncio.gather(*readers)
            for name, events in clients.items():
                assert_every_line_once(events, count, name)
            await wait_log(collector, RESUMED)
            assert collector.log_text().count(PAUSED) == 1
            reconnects = await metric(session, base, "tasklog_api_redis_reconnects_total")
            assert reconnects > reconnects_before

            # Live push is back: a task run entirely after Redis returned arrives through it.
            pushed_before = await metric(
                session, base, 'tasklog_api_redis_messages_total{channel="lines"}'
            )
            task2 = celery_client.send_task("demo.print_lines", kwargs={"count": 20})
            async with follow(session, base, task2.id) as stream:
                events2 = await stream.rest(timeout=60)
            assert_every_line_once(events2, 20, "client after the outage")
            pushed_after = await metric(
                session, base, 'tasklog_api_redis_messages_total{channel="lines"}'
            )
            assert pushed_after > pushed_before
    finally:
        procs.stop_all()
        live.stop()


# -- load ----------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_soak_bounded(database_url: str, redis_url: str, tmp_path: Path) -> None:
    """bench/soak.py at a CI size: nothing lost or duplicated, stored or streamed; memory of
    every process within generous bounds (the full run's figures: docs/RELIABILITY.md)."""
    from bench.soak import soak

    tasks, lines, clients = 100, 500, 40
    report = await asyncio.to_thread(
        soak, database_url, redis_url, tasks, lines, clients, tmp_path / "soak", timeout=150
    )
    assert report.lines_stored == report.lines_sent == tasks * lines
    assert (report.lines_duplicated, report.lines_lost) == (0, 0)
    assert report.sse_received == report.sse_expected == tasks * lines
    assert (report.sse_duplicated, report.sse_missed, report.sse_wrong_text) == (0, 0, 0)
    assert report.sse_ends == tasks and report.tasks_finished == tasks
    for name, megabytes in report.rss_peak_mb.items():
        assert 0 < megabytes < 400, (name, megabytes)
