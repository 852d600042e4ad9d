"""The API hub's connection to Redis: one spell of it (a `Session`) and its pub/sub
connections (a `Link` per node).

A session subscribes everything its hub follows, holds the channels followers come for and
release, and ends at the first error on any of its links: the hub (`api.hub.Hub`) then starts
a new one. It tells the hub what happens through the `Listener` protocol alone: a message
arrived, a channel holds, every channel holds. The clients come from the Redis boundary
(`tasklog.core.live`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any, Protocol

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from tasklog.core import live
from tasklog.core.constants import LINES_CHANNEL_PREFIX, TASKS_CHANNEL, lines_channel

#: Channels per SUBSCRIBE command when a session resubscribes everything.
_SUBSCRIBE_CHUNK = 500


class Listener(Protocol):
    """What a session tells its hub, and asks of it."""

    #: Whether every channel held (the hub is live).
    live: bool
    #: Seconds of silence after which a link pings its connection.
    ping_every: float

    def followed(self) -> list[str]: ...

    def dispatch(self, channel: bytes, data: bytes) -> None: ...

    def confirmed(self, task_id: str) -> None: ...

    def went_live(self) -> None: ...


class Session:
    """One spell of connection: the pub/sub links, the channels held, until the first error.

    Per channel it counts the (un)subscribe commands sent and not yet confirmed: Redis answers
    them in order, so a channel holds when the confirmation of its last command is a subscribe.
    """

    def __init__(self, hub: Listener, client: live.Client, url: str, name: str) -> None:
        self._hub = hub
        self._name = name
        self._client = client
        self._url = url
        self._sharded = isinstance(client, RedisCluster)
        self._links: dict[str, Link] = {}
        self._inflight: dict[str, int] = {}
        self._sends: set[asyncio.Task[None]] = set()
        self._failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # What the session starts with; a follower that comes meanwhile waits for it.
        channels = [TASKS_CHANNEL, *map(lines_channel, hub.followed())]
        self._held = {channel: asyncio.Event() for channel in channels}
        self._starting = set(channels)

    async def run(self) -> None:
        """Subscribe everything followed, then dispatch until a link fails (raises)."""
        if isinstance(self._client, RedisCluster):
            # Whoever owns each slot now (after a failover or a resharding).
            await self._client.nodes_manager.initialize()
        await self._send(True, [c for c in self._starting if c in self._held])
        await self._failed

    async def aclose(self) -> None:
        for task in self._sends:
            task.cancel()
        await asyncio.gather(*self._sends, return_exceptions=True)
        for link in self._links.values():
            await link.aclose()

    async def hold(self, channel: str, timeout: float) -> bool:
        """Subscribe `channel` unless held or asked; whether it holds within `timeout` s."""
        event = self._held.get(channel)
        if event is None:
            event = self._held[channel] = asyncio.Event()
            try:
                await self._send(True, [channel])
            except live.ERRORS as exc:
                self._fail(exc)
                return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()
        return event.is_set()

    def release(self, channel: str) -> None:
        """Unsubscribe `channel` (its last follower left), without waiting for Redis."""
        if self._held.pop(channel, None) is None:
            return
        self._starting.discard(channel)
        self._check_started()
        task = asyncio.create_task(self._send(False, [channel]), name="redis-unsubscribe")
        self._sends.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sends.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._fail(task.exception())

    def _fail(self, exc: BaseException | None) -> None:
        if not self._failed.done():
            self._failed.set_exception(exc or ConnectionError("Redis pub/sub failed"))

    async def _send(self, subscribe: bool, channels: list[str]) -> None:
        for channel in channels:
            self._inflight[channel] = self._inflight.get(channel, 0) + 1
        for link, group in self._by_link(channels):
            for start in range(0, len(group), _SUBSCRIBE_CHUNK):
                chunk = group[start : start + _SUBSCRIBE_CHUNK]
                if self._sharded:
                    # One slot per SSUBSCRIBE (several would be refused as CROSSSLOT).
                    for channel in chunk:
                        await link.send(subscribe, [channel])
                else:
                    await link.send(subscribe, chunk)

    def _by_link(self, channels: Iterable[str]) -> list[tuple[Link, list[str]]]:
        groups: dict[str, list[str]] = {}
        for channel in channels:
            if isinstance(self._client, RedisCluster):
                node = self._client.get_node_from_key(channel)
                if node is None:
                    raise RedisClusterException(f"no Redis Cluster node owns {channel}")
                name, url = node.name, live.node_url(self._url, node.host, node.port)
            else:
                name, url = "redis", self._url
            if name not in self._links:
                self._links[name] = Link(
                    self, name, url, self._sharded, self._hub.ping_every, self._name
                )
            groups.setdefault(name, []).append(channel)
        return [(self._links[name], group) for name, group in groups.items()]

    def on_message(self, kind: str, channel: bytes, data: Any) -> None:
        if kind in ("message", "smessage"):
            self._hub.dispatch(channel, data)
            return
        name = channel.decode("utf-8", "replace")
        inflight = self._inflight.get(name, 0)
        if inflight == 0:
            # Redis dropped a subscription by itself: its slot moved or its node is a replica
            # now. Start over, asking the cluster who owns what.
            raise ConnectionError(f"Redis ended the subscription to {name} ({kind})")
        if inflight > 1:
            self._inflight[name] = inflight - 1
            return  # a later command on this channel decides
        del self._inflight[name]
        event = self._held.get(name)
        if kind not in ("subscribe", "ssubscribe") or event is None:
            return
        event.set()
        if name in self._starting:
            self._starting.discard(name)
            self._check_started()
        elif name.startswith(LINES_CHANNEL_PREFIX) and self._hub.live:
            self._hub.confirmed(name[len(LINES_CHANNEL_PREFIX) :])

    def _check_started(self) -> None:
        if not self._starting and TASKS_CHANNEL in self._held and not self._hub.live:
            self._hub.went_live()

    def link_failed(self, exc: BaseException) -> None:
        self._fail(exc)


class Link:
    """One pub/sub connection to one Redis node, read by a task of its own."""

    def __init__(
        self,
        session: Session,
        name: str,
        url: str,
        sharded: bool,
        ping_every: float,
        client_name: str,
    ) -> None:
        self._session = session
        self._sharded = sharded
        self._ping_every = ping_every
        self._client = live.pubsub_client(url, name=client_name)
        self._pubsub = self._client.pubsub()
        self._reader: asyncio.Task[None] | None = None
        self._name = name
        #: One command at a time. The first one opens the pub/sub's connection; two at once
        #: (the session subscribing what it starts with while a follower holds its channel)
        #: would each open one (redis-py's `PubSub.connect`), and one of them is never read.
        self._sending = asyncio.Lock()

    async def send(self, subscribe: bool, channels: list[str]) -> None:
        async with self._sending:
            if self._sharded:
                if subscribe:
                    await self._pubsub.ssubscribe(*channels)
                else:
                    await self._pubsub.sunsubscribe(*channels)
            elif subscribe:
                await self._pubsub.subscribe(*channels)
            else:
                await self._pubsub.unsubscribe(*channels)
            if self._reader is None:  # only now has the pub/sub a connection to read
                self._reader = asyncio.create_task(self._read(), name=f"redis-hub-{self._name}")
                self._reader.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled():
            self._session.link_failed(task.exception() or ConnectionError("pub/sub ended"))

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        with contextlib.suppress(*live.ERRORS):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
        await self._client.aclose(close_connection_pool=True)

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        last_seen = loop.time()
        ping_sent: float | None = None
        while True:
            message = await self._pubsub.get_message(timeout=self._ping_every)
            now = loop.time()
            if message is None:
                # A silent half-open connection would block forever: ping it, and give up on
                # it when the answer does not come.
                if ping_sent is not None and now - ping_sent > 2 * self._ping_every:
                    raise ConnectionError("Redis did not answer a PING")
                if ping_sent is None and now - last_seen >= self._ping_every:
                    await self._pubsub.ping()
                    ping_sent = now
                continue
            last_seen, ping_sent = now, None
            kind = message["type"]
            if kind != "pong":
                self._session.on_message(kind, message["channel"], message["data"])
