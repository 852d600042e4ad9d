"""Redis traffic in proportion to viewers, with the real worker, collector and API processes.

The collector and the API publish and subscribe through a Redis of their own (the workers'
broker, which uses pattern subscriptions of its own, is the shared test Redis), so what
`PUBSUB CHANNELS` and `PUBSUB NUMPAT` report is theirs alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from api.hub import CLIENT_NAME
from tasklog.core.constants import LINES_CHANNEL_PREFIX, TASKS_CHANNEL, lines_channel
from tasklog.demo.embedded import EmbeddedRedis
from tests.helpers import ProcessFactory, free_port, pg_rows
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


class Watcher:
    """What the collector and the API hold and send, as Redis itself reports it."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    async def channels(self) -> set[str]:
        return {c.decode() for c in await self.client.pubsub_channels()}

    async def numpat(self) -> int:
        return int(await self.client.pubsub_numpat())

    async def published(self) -> int:
        stats = await self.client.info("commandstats")
        return int(stats.get("cmdstat_publish", {}).get("calls", 0))

    async def has_published(self, count: int) -> bool:
        return await self.published() >= count

    async def api_subscriptions(self) -> list[dict[str, int]]:
        """The subscription counts of the API's pub/sub connections (CLIENT LIST)."""
        found = []
        for client in await self.client.client_list(_type="pubsub"):
            if client.get("name") == CLIENT_NAME:
                found.append({k: int(client.get(k, 0)) for k in ("sub", "psub", "ssub")})
        return found

    @asynccontextmanager
    async def lines_listener(self) -> AsyncIterator[list[str]]:
        """The channels lines are published on, seen by a pattern subscription of the test."""
        pubsub = self.client.pubsub()
        await pubsub.psubscribe(LINES_PATTERN)
        await pubsub.get_message(timeout=5)  # the psubscribe confirmation
        seen: list[str] = []

        async def pump() -> None:
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if message is not None:
                    seen.append(message["channel"].decode())

        pumping = asyncio.create_task(pump(), name="test-lines-listener")
        try:
            yield seen
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
) -> str:
    procs.collector(
        database_url=database_url, redis_url=live, spool_dir=spool_dir, ready="following"
    )
    _, base = start_api(procs, database_url, live)
    procs.worker(redis_url=broker, spool_dir=spool_dir, pool="threads", concurrency=2)
    return base


async def test_no_viewer_no_task_channel_and_no_lines_published(
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
    live_redis: EmbeddedRedis,
    watcher: Watcher,
) -> None:
    await start_stack(procs, database_url, redis_url, live_redis.url(), spool_dir)

    async def only_tasks_channel() -> bool:
        return await watcher.channels() == {TASKS_CHANNEL}

    await watcher.until(only_tasks_channel, "the API to subscribe the tasks channel")
    async with watcher.lines_listener() as seen:
        published_before = await watcher.published()
        tasks = [
            celery_client.send_task("demo.print_lines", kwargs={"count": 300, "delay": 0.002})
            for _ in range(2)
        ]
        samples = 0
        while not all(task.ready() for task in tasks):
            # While tasks print: the API holds the tasks channel, no task channel, no pattern.
            assert await watcher.channels() == {TASKS_CHANNEL}
            assert await watcher.api_subscriptions() == [{"sub": 1, "psub": 0, "ssub": 0}]
            samples += 1
            await asyncio.sleep(0.05)
        assert samples > 1
        for task in tasks:
            assert task.get(timeout=60) == 300
        await watcher.until(
            lambda: stored(database_url, [t.id for t in tasks]), "the tasks to be stored"
        )
        await watcher.until(
            lambda: watcher.has_published(published_before + 2), "the task rows to be published"
        )
        # Each stored batch published its task's row; no line of an unfollowed task went out.
        assert seen == []
        assert await watcher.published() - published_before < 600


async def test_viewer_of_one_task_subscribes_its_channel_only(
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
    live_redis: EmbeddedRedis,
    watcher: Watcher,
) -> None:
    base = await start_stack(procs, database_url, redis_url, live_redis.url(), spool_dir)

    async def only_tasks_channel() -> bool:
        return await watcher.channels() == {TASKS_CHANNEL}

    await watcher.until(only_tasks_channel, "the API to subscribe the tasks channel")
    async with watcher.lines_listener() as seen:
        count = 400
        followed = celery_client.send_task(
            "demo.print_lines", kwargs={"count": count, "delay": 0.005}
        )
        other = celery_client.send_task("demo.print_lines", kwargs={"count": count, "delay": 0.005})
        async with http() as session:
            async with follow(session, base, followed.id) as stream:
                first = await stream.until(lambda e: e.type == "new_log")
                # Followed: its channel, and only its channel, is held.
                assert await watcher.channels() == {TASKS_CHANNEL, lines_channel(followed.id)}
                assert await watcher.api_subscriptions() == [{"sub": 2, "psub": 0, "ssub": 0}]
                assert await metric(session, base, "tasklog_api_redis_task_channels") == 1
                events = first + await stream.rest(timeout=60)
            assert seqs(events) == list(range(1, count + 1))
            messages = [e.data["message"] for e in events if e.type == "new_log"]
            assert messages == [f"line {i}" for i in range(1, count + 1)]
            assert events[-1].type == "end"

            # The viewer left: its channel goes.
            await watcher.until(only_tasks_channel, "the API to unsubscribe the task")
            other.get(timeout=60)
        # Lines went out for the followed task only (the pattern is this test's own).
        assert seen, "no line of the followed task went through Redis"
        assert set(seen) == {lines_channel(followed.id)}
        assert await watcher.numpat() == 1  # the test's own
