"""The Redis boundary of the live path, shared by the collector (publisher) and the API (reader).

One Redis or a Redis Cluster: `connect` asks the server named by TASKLOG_REDIS_URL whether it
is a cluster node (``INFO cluster``) unless TASKLOG_REDIS_CLUSTER says so, and returns a plain
or a cluster client. On a cluster the live path uses sharded pub/sub (SPUBLISH/SSUBSCRIBE,
Redis >= 7): a task's channel lives on the shard that owns its slot, instead of classic pub/sub
which every node broadcasts to every other. Key and channel names: `tasklog.core.constants`.

Which tasks are followed is a sorted set (`WATCHED_KEY`): member = task id, score = the Unix
time until which some API process follows it. API processes add their followed tasks and
refresh them every third of `WATCH_TTL`; the collector publishes a task's lines only while
its score lies ahead (hosts' clocks must agree to within `WATCH_TTL`). Correctness never
depends on it: every stored batch also publishes its task's row (with ``last_seq``), and a
reader that sees a ``last_seq`` past what it was sent reads the rest from Postgres.

This module is the one Redis boundary: every client is built here (`connect` for commands,
`pubsub_client` for a node's pub/sub connection), the watched set's commands are here
(`watched_scores`, `mark_watched`, `drop_expired_marks`), and a Redis error becomes one line
naming the setting here (`ERRORS`, `describe`), as `tasklog.core.db` does for Postgres.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Iterable
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError

from tasklog.core.constants import WATCHED_KEY

__all__ = [
    "ERRORS",
    "Client",
    "ClusterMode",
    "connect",
    "describe",
    "drop_expired_marks",
    "is_cluster",
    "mark_watched",
    "node_url",
    "publish_command",
    "pubsub_client",
    "server_info",
    "watched_scores",
]

#: What a Redis call raises when the server cannot be reached or refuses: callers catch these
#: and say why with `describe`.
ERRORS = (RedisError, RedisClusterException, OSError)
#: The setting every Redis message names.
SETTING = "TASKLOG_REDIS_URL"
#: Members per ZADD when many tasks are marked at once.
_MARK_CHUNK = 500

ClusterMode = Literal["auto", "true", "false"]
Client = aioredis.Redis | RedisCluster


async def connect(
    url: str, mode: ClusterMode = "auto", *, name: str, timeout: float = 2.0
) -> Client:
    """A client for `url`: a cluster client if the server is a cluster node (or `mode` says).

    `name` is the connections' CLIENT SETNAME, so that CLIENT LIST shows who is who. Raises
    redis-py's errors (or OSError) when the server cannot be asked; callers retry.
    """
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "client_name": name,
    }
    cluster = mode == "true"
    if mode == "auto":
        probe = aioredis.from_url(url, retry=Retry(NoBackoff(), 0), **options)
        try:
            info = await probe.info("cluster")
        finally:
            await probe.aclose(close_connection_pool=True)
        cluster = bool(info.get("cluster_enabled"))
    if not cluster:
        return aioredis.from_url(url, **options)
    client = RedisCluster.from_url(url, **options)
    try:
        await client.initialize()
    except BaseException:
        await client.aclose()
        raise
    return client


def is_cluster(client: Client) -> bool:
    return isinstance(client, RedisCluster)


def publish_command(client: Client) -> str:
    """PUBLISH on one Redis; SPUBLISH on a cluster, so a message stays on its channel's shard."""
    return "SPUBLISH" if is_cluster(client) else "PUBLISH"


def node_url(url: str, host: str, port: int | str) -> str:
    """`url` (credentials, TLS) pointed at one cluster node."""
    parts = urllib.parse.urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    where = f"[{host}]" if ":" in host else host
    netloc = f"{auth}@{where}:{port}" if auth else f"{where}:{port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, path="/0"))


async def server_info(client: Client) -> dict[str, Any]:
    """``INFO server`` (one node's, on a cluster): the version, for health checks."""
    if isinstance(client, RedisCluster):
        info = await client.info("server", target_nodes=RedisCluster.RANDOM)
    else:
        info = await client.info("server")
    return dict(info)


def pubsub_client(url: str, *, name: str, connect_timeout: float = 5.0) -> aioredis.Redis:
    """A client for one node's pub/sub connection. It never retries by itself: whoever reads
    it (the API's hub) reconnects and subscribes everything again."""
    return aioredis.from_url(
        url,
        socket_connect_timeout=connect_timeout,
        retry=Retry(NoBackoff(), 0),
        client_name=name,
    )


def describe(exc: BaseException) -> str:
    """A Redis error (one of `ERRORS`) as one line naming the setting, never a traceback."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{SETTING}: {text}"


# -- the watched set -------------------------------------------------------------------------


async def watched_scores(client: Client, task_ids: list[str]) -> list[float | None]:
    """Each task's follow mark (the Unix time it expires), None for a task nobody follows."""
    scores = await client.execute_command("ZMSCORE", WATCHED_KEY, *task_ids)
    return [None if score is None else float(score) for score in scores]


async def mark_watched(client: Client, task_ids: Iterable[str], until: float) -> None:
    """Mark tasks followed until the Unix time `until` (an API process follows them)."""
    ids = list(task_ids)
    for start in range(0, len(ids), _MARK_CHUNK):
        await client.zadd(WATCHED_KEY, dict.fromkeys(ids[start : start + _MARK_CHUNK], until))


async def drop_expired_marks(client: Client) -> None:
    """Drop every follow mark past its time (any process's: one that died leaves its own)."""
    await client.zremrangebyscore(WATCHED_KEY, "-inf", time.time())
