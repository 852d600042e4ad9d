"""Redis traffic in proportion to viewers, with the real worker, collector and API processes.

The collector and the API publish and subscribe through a Redis of their own (the workers'
broker, which uses pattern subscriptions of its own, is the shared test Redis). Even so, only
what is this test's own is counted: the pub/sub connection of the API process it started (found
by its sockets' addresses), and the messages about its own tasks, seen by a subscription of
its own; never server-wide figures that any other process on the server would change.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from api.hub import CLIENT_NAME
from tasklog.core.constants import LINES_CHANNEL_PREFIX, TASKS_CHANNEL, lines_channel
from tasklog.demo.embedded_redis import EmbeddedRedis
from tests.helpers import Proc, ProcessFactory, free_port, pg_rows, socket_addresses
from tests.integration.api_support import follow, http, metric, seqs, start_api

pytestmark = pytest.mark.asyncio(loop_scope="session")

LINES_PATTERN = LINES_CHANNEL_PREFIX + "*"


@pytest.fixture
def live_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "live-redis", port=free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def watcher(live_redis: EmbeddedRedis) -> AsyncIterator[Watcher]:
    client = aioredis.from_url(live_redis.url())
    try:
        yield Watcher(client)
    finally:
        await client.aclose(close_connection_pool=True)


class Heard:
    """What the test's own subscription received, in order: lines messages (their channels)
    and task rows (their task ids and states)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.tasks: list[tuple[str, str]] = []

    def lines_of(self, task_ids: list[str]) -> list[str]:
        channels = {lines_channel(task_id) for task_id in task_ids}
        return [channel for channel in self.lines if channel in channels]

    def rows_of(self, task_ids: list[str]) -> int:
        return sum(task_id in task_ids for task_id, _ in self.tasks)

    def finished(self, task_ids: list[str]) -> bool:
        """Each task's SUCCESS row arrived: every message about it came before (a batch's
        lines are published ahead of its rows, on one connection)."""
        return {task_id for task_id, state in self.tasks if state == "SUCCESS"} >= set(task_ids)


class Watcher:
    """What the API process of this test holds and what the collector sends about this test's
    tasks, as Redis itself reports it."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    async def numsub(self, task_id: str) -> int:
        """Direct subscribers of a task's lines channel (the test's own is a pattern)."""
        ((_, count),) = await self.client.pubsub_numsub(lines_channel(task_id))
        return int(count)

    async def api_subscriptions(self, api: Proc) -> list[dict[str, int]]:
        """The subscription counts of the pub/sub connections of `api` (CLIENT LIST)."""
        ours = socket_addresses([api.pid, *api.children()])
        return [
            {k: int(client.get(k, 0)) for k in ("sub", "psub", "ssub")}
            for client in await self.client.client_list(_type="pubsub")
            if client.get("name") == CLIENT_NAME and client["addr"] in ours
        ]

    async def api_holds(self, api: Proc, channels: int) -> bool:
        """`api` holds `channels` channels (the tasks channel and followed tasks'), no pattern."""
        return await self.api_subscriptions(api) == [{"sub": channels, "psub": 0, "ssub": 0}]

    @asynccontextmanager
    async def listener(self) -> AsyncIterator[Heard]:
        """Every lines message (a pattern subscription of the test's) and every task row."""
        pubsub = self.client.pubsub()
        await pubsub.psubscribe(LINES_PATTERN)
        await pubsub.subscribe(TASKS_CHANNEL)
        for kind in ("psubscribe", "subscribe"):  # both confirmed: nothing is missed after
            confirmed = await pubsub.get_message(timeout=5)
            assert confirmed is not None and confirmed["type"] == kind, confirmed
        heard = Heard()

        async def pump() -> None:
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if message is None:
                    continue
                channel = message["channel"].decode()
                if channel == TASKS_CHANNEL:
                    row = orjson.loads(message["data"])
                    heard.tasks.append((row["task_id"], row["status"]))
                else:
                    heard.lines.append(channel)

        pumping = asyncio.create_task(pump(), name="test-listener")
        try:
            yield heard
        finally:
            pumping.cancel()
            await asyncio.gather(pumping, return_exceptions=True)
            await pubsub.aclose()

    async def until(self, predicate: Any, what: str, timeout: float = 20) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not await predicate():
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None


async def stored(database_url: str, task_ids: list[str]) -> bool:
    rows = pg_rows(
        database_url,
        "SELECT count(*) FROM tasks WHERE task_id = ANY(%s) AND state = 'SUCCESS'",
        (task_ids,),
    )
    return bool(rows[0][0] == len(task_ids))


async def start_stack(
    procs: ProcessFactory, database_url: str, broker: str, live: str, spool_dir: Path
) -> tuple[Proc, str]:
    procs.collector(
        database_url=database_url, redis_url=live, spool_dir=spool_dir, ready="following"
    )
    api, base = start_api(procs, database_url, live)
    procs.worker(redis_url=broker, spool_dir=spool_dir, pool="threads", concurrency=2)
    return api, base


async def test_no_viewer_no_task_channel_and_no_lines_published(
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
    live_redis: EmbeddedRedis,
    watcher: Watcher,
) -> None:
    api, _ = await start_stack(procs, database_url, redis_url, live_redis.url(), spool_dir)
    await watcher.until(lambda: watcher.api_holds(api, 1), "the API to subscribe the tasks channel")
    async with watcher.listener() as heard:
        tasks = [
            celery_client.send_task("demo.print_lines", kwargs={"count": 300, "delay": 0.002})
            for _ in range(2)
        ]
        ids = [task.id for task in tasks]
        samples = 0
        while not all(task.ready() for task in tasks):
            # While tasks print: the API holds the tasks channel alone, no task's, no pattern.
            assert await watcher.api_holds(api, 1)
            assert [await watcher.numsub(task_id) for task_id in ids] == [0, 0]
            samples += 1
            await asyncio.sleep(0.05)
        assert samples > 1
        for task in tasks:
            assert task.get(timeout=60) == 300
        await watcher.until(lambda: stored(database_url, ids), "the tasks to be stored")

        async def rows_heard() -> bool:
            return heard.finished(ids)

        await watcher.until(rows_heard, "the tasks' SUCCESS rows to be published")
        # Each stored batch published its task's row; no line of an unfollowed task went out.
        assert heard.lines_of(ids) == []
        assert heard.rows_of(ids) < 600  # a row per batch, far fewer than the 600 lines


async def test_viewer_of_one_task_subscribes_its_channel_only(
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
    live_redis: EmbeddedRedis,
    watcher: Watcher,
) -> None:
    api, base = await start_stack(procs, database_url, redis_url, live_redis.url(), spool_dir)
    await watcher.until(lambda: watcher.api_holds(api, 1), "the API to subscribe the tasks channel")
    async with watcher.listener() as heard:
        count = 400
        followed = celery_client.send_task(
            "demo.print_lines", kwargs={"count": count, "delay": 0.005}
        )
        other = celery_client.send_task("demo.print_lines", kwargs={"count": count, "delay": 0.005})
        async with http() as session:
            async with follow(session, base, followed.id) as stream:
                first = await stream.until(lambda e: e.type == "new_log")
                # Followed: its channel, and only its channel, is held, by the API alone.
                assert await watcher.api_holds(api, 2)
                assert await watcher.numsub(followed.id) == 1
                assert await watcher.numsub(other.id) == 0
                assert await metric(session, base, "tasklog_api_redis_task_channels") == 1
                events = first + await stream.rest(timeout=60)
            assert seqs(events) == list(range(1, count + 1))
            messages = [e.data["message"] for e in events if e.type == "new_log"]
            assert messages == [f"line {i}" for i in range(1, count + 1)]
            assert events[-1].type == "end"

            # The viewer left: its channel goes.
            async def left() -> bool:
                return await watcher.api_holds(api, 1) and await watcher.numsub(followed.id) == 0

            await watcher.until(left, "the API to unsubscribe the task")
            other.get(timeout=60)

        async def both_heard() -> bool:
            return heard.finished([followed.id, other.id])

        await watcher.until(both_heard, "both tasks' SUCCESS rows to be published")
        # Lines went out for the followed task only.
        channels = heard.lines_of([followed.id, other.id])
        assert channels, "no line of the followed task went through Redis"
        assert set(channels) == {lines_channel(followed.id)}
