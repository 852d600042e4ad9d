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
"""

from __future__ import annotations

import urllib.parse
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

__all__ = [
    "Client",
    "ClusterMode",
    "connect",
    "is_cluster",
    "node_url",
    "publish_command",
]

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
