"""The live path through a real 3-master Redis Cluster, on sharded channels.

The collector and the API are given one node's URL and find the cluster themselves (INFO
cluster); the Celery broker stays the single test Redis. A node is restarted mid-stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tasklog.core.constants import TASKS_CHANNEL, WATCHED_KEY, lines_channel
from tests.helpers import ProcessFactory
from tests.integration.api_support import PREFIX, follow, http, seqs, start_api
from tests.redis_cluster import Node, RedisClusterNodes, unavailable

pytestmark = [
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.skipif(unavailable() is not None, reason=str(unavailable())),
]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisClusterNodes]:
    with RedisClusterNodes(tmp_path / "cluster", masters=3) as nodes:
        yield nodes


def sharded(cluster: RedisClusterNodes) -> dict[int, set[str]]:
    """Per running node's port: the shard channels it has subscribers for."""
    found = {}
    for node in cluster.running():
        with node.client() as client:
            channels = client.execute_command("PUBSUB", "SHARDCHANNELS")
        found[node.port] = {c.decode() for c in channels}
    return found


def classic(cluster: RedisClusterNodes) -> tuple[int, int]:
    """Classic pub/sub anywhere in the cluster: (channels, patterns)."""
    channels = patterns = 0
    for node in cluster.running():
        with node.client() as client:
            channels += len(client.pubsub_channels())
            patterns += int(client.pubsub_numpat())
    return channels, patterns


async def until(predicate: Any, what: str, timeout: float = 30) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not await asyncio.to_thread(predicate):
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def test_viewer_through_the_cluster_gets_every_line_with_a_node_restarted(
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
    cluster: RedisClusterNodes,
) -> None:
    task_id = str(uuid.uuid4())
    channel = lines_channel(task_id)
    owner = cluster.owner(channel)
    # Any node's URL will do: the one that does not own the channel, to show it.
    given = next(n for n in cluster.nodes if n is not owner).url
    procs.collector(
        database_url=database_url, redis_url=given, spool_dir=spool_dir, ready="following"
    )
    _, base = start_api(procs, database_url, given)
    procs.worker(redis_url=redis_url, spool_dir=spool_dir, pool="threads", concurrency=2)
    tasks_owner = cluster.owner(TASKS_CHANNEL).port
    await until(
        lambda: TASKS_CHANNEL in sharded(cluster)[tasks_owner],
        "the API to subscribe the sharded tasks channel",
    )
    count = 1500
    async with http() as session:
        response = await session.get(f"{base}{PREFIX}/healthz")
        health = await response.json()
        assert response.status == 200 and health["status"] == "ok"
        assert health["redis"]["ok"] is True and health["redis"]["subscribed"] is True
        async with follow(session, base, task_id) as stream:
            events = await stream.until(lambda e: e.type == "connected")
            # The task's channel lives on its shard alone; no classic pub/sub anywhere.
            await until(lambda: channel in sharded(cluster)[owner.port], "the task's channel")
            assert {p: c for p, c in sharded(cluster).items() if c} == (
                {owner.port: {channel}, tasks_owner: {TASKS_CHANNEL}}
                if owner.port != tasks_owner
                else {owner.port: {channel, TASKS_CHANNEL}}
            )
            assert classic(cluster) == (0, 0)
            watched = cluster.owner(WATCHED_KEY)
            with watched.client() as client:
                assert client.zscore(WATCHED_KEY, task_id) is not None

            celery_client.send_task(
                "demo.print_lines",
                kwargs={"count": count, "delay": 0.004},
                task_id=task_id,
            )
            events += await stream.until(lambda e: e.type == "new_log" and e.id == "100")
            # The shard of the task's channel goes down and comes back mid-stream.
            await asyncio.to_thread(owner.stop)
            await asyncio.to_thread(owner.start)
            await asyncio.to_thread(cluster.wait_ok)
            await until(
                lambda: channel in sharded(cluster)[owner.port],
                "the API to subscribe the task's channel again",
            )
            received_after = await lines_received(session, base)
            events += await stream.rest(timeout=120)
        assert seqs(events) == list(range(1, count + 1))
        messages = [e.data["message"] for e in events if e.type == "new_log"]
        assert messages == [f"line {i}" for i in range(1, count + 1)]
        assert events[-1].type == "end"
        # Lines kept coming through the restarted shard, not only from Postgres.
        assert await lines_received(session, base) > received_after
    await until(lambda: channel not in sharded(cluster)[owner.port], "the channel to go")


async def test_a_slot_moved_mid_stream_is_followed_to_its_new_node(
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
    cluster: RedisClusterNodes,
) -> None:
    task_id = str(uuid.uuid4())
    channel = lines_channel(task_id)
    old = cluster.owner(channel)
    new = next(n for n in cluster.nodes if n is not old)
    given = cluster.nodes[0].url
    procs.collector(
        database_url=database_url, redis_url=given, spool_dir=spool_dir, ready="following"
    )
    _, base = start_api(procs, database_url, given)
    procs.worker(redis_url=redis_url, spool_dir=spool_dir, pool="threads", concurrency=2)
    count = 1500
    async with http() as session, follow(session, base, task_id) as stream:
        events = await stream.until(lambda e: e.type == "connected")
        await until(lambda: channel in sharded(cluster)[old.port], "the task's channel")
        celery_client.send_task(
            "demo.print_lines", kwargs={"count": count, "delay": 0.004}, task_id=task_id
        )
        events += await stream.until(lambda e: e.type == "new_log" and e.id == "100")
        await asyncio.to_thread(cluster.move_slot, channel, new)
        # Redis drops the old node's subscribers of the slot; the API finds the new owner.
        await until(
            lambda: (
                channel in sharded(cluster)[new.port] and channel not in sharded(cluster)[old.port]
            ),
            "the API to subscribe the task's channel on its new node",
        )
        received_after = await lines_received(session, base)
        events += await stream.rest(timeout=120)
        assert seqs(events) == list(range(1, count + 1))
        assert events[-1].type == "end"
        assert await lines_received(session, base) > received_after


@pytest.mark.slow  # a 2 s node timeout, then an election
async def test_a_master_killed_mid_stream_fails_over_to_its_replica(
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
    tmp_path: Path,
) -> None:
    with RedisClusterNodes(tmp_path / "cluster", masters=3, replicas=1) as cluster:
        task_id = str(uuid.uuid4())
        channel = lines_channel(task_id)
        old = cluster.owner(channel)
        given = next(n for n in cluster.nodes if n is not old).url
        procs.collector(
            database_url=database_url, redis_url=given, spool_dir=spool_dir, ready="following"
        )
        _, base = start_api(procs, database_url, given)
        # Every line is kept (TASKLOG_MAX_LINES above the count): a stream that polls
        # Postgres while Redis fails over would otherwise find the middle lines trimmed by
        # the head+tail bound, as it should, and miss them.
        procs.worker(
            redis_url=redis_url,
            spool_dir=spool_dir,
            pool="threads",
            concurrency=2,
            env={"TASKLOG_MAX_LINES": "5000"},
        )
        count = 2000
        async with http() as session, follow(session, base, task_id) as stream:
            events = await stream.until(lambda e: e.type == "connected")
            await until(lambda: channel in sharded(cluster)[old.port], "the task's channel")
            celery_client.send_task(
                "demo.print_lines", kwargs={"count": count, "delay": 0.004}, task_id=task_id
            )
            events += await stream.until(lambda e: e.type == "new_log" and e.id == "100")
            assert old.proc is not None
            old.proc.kill()  # kill -9: its replica takes over after the node timeout (2 s)
            await asyncio.to_thread(old.proc.wait, 10)
            old.proc = None

            def promoted() -> Node | None:
                with contextlib.suppress(redis.RedisError, AssertionError):
                    owner = cluster.owner(channel)
                    return owner if owner is not old else None
                return None

            await until(promoted, "a replica to be promoted")
            new = promoted()
            assert new is not None
            await until(
                lambda: channel in sharded(cluster)[new.port],
                "the API to subscribe the task's channel on the promoted replica",
            )
            received_after = await lines_received(session, base)
            events += await stream.rest(timeout=120)
            assert seqs(events) == list(range(1, count + 1))
            assert events[-1].type == "end"
            assert await lines_received(session, base) > received_after


async def lines_received(session: Any, base: str) -> float:
    text = await (await session.get(f"{base}{PREFIX}/metrics")).text()
    for line in text.splitlines():
        if line.startswith('tasklog_api_redis_messages_total{channel="lines"}'):
            return float(line.split()[-1])
    return 0.0
