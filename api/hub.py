"""The Redis pub/sub of an API process, fanned out to every SSE client, in proportion to viewers.

The hub holds the tasks channel (task-list changes) at all times, and a task's lines channel
only while at least one client of this process follows that task: the first follower
subscribes it, the last one to leave unsubscribes it. No pattern subscription: a process with
no viewer receives no line at all. Followed tasks are also written to the watched set
(`tasklog.core.live`), refreshed every third of `WATCH_TTL`, so the collector publishes their lines
and nobody else's.

On one Redis that is one connection (SUBSCRIBE/UNSUBSCRIBE). On a Redis Cluster, channels are
sharded (SSUBSCRIBE/SUNSUBSCRIBE) and the hub holds one connection per node that owns a
channel it follows.

The hand-over from the Postgres replay to live messages is gap-free because a follower's
channel is confirmed subscribed before its replay starts: `Hub.subscribe` waits for Redis to
confirm (bounded); when the confirmation comes later than that, the subscription receives
`RESYNC` and its stream reads Postgres again.

redis-py's asyncio pub/sub does not come back by itself after an outage, a failover or a slot
that moved, so the hub's link is a reconnect-and-resubscribe loop: each spell of connection is
a `_Session` that subscribes everything followed and ends at the first error on any of its
connections. `Hub.run` supervises the link (`tasklog.core.supervise`): an error nobody
expected is logged once and the link starts again after a backoff, so the hub never stops
for good while the API runs on. Whenever the connection is lost or comes back, every
subscription receives `RESYNC`: whatever was published meanwhile is in Postgres, and the
stream catches up from there.

Each subscription has its own bounded buffer: a client that cannot keep up overflows its own
buffer and is cut off (it resumes with Last-Event-ID) instead of slowing the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any, Final, Literal

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError

from api import metrics
from tasklog.core import live, messages, supervise
from tasklog.core.constants import (
    LINES_CHANNEL_PREFIX,
    TASKS_CHANNEL,
    WATCH_TTL,
    WATCHED_KEY,
    lines_channel,
)

log = logging.getLogger("tasklog.api.hub")
#: Seconds between two warnings about dropped messages.
DROP_WARNING_INTERVAL = 60.0

#: Pushed to every subscription when the Redis connection is lost or restored.
RESYNC: Final = "resync"
#: What a subscription receives: a message of the live path, or `RESYNC`.
Item = messages.LinesMessage | messages.TaskMessage | Literal["resync"]
#: Longest wait for Redis to confirm a new follower's channel before its replay starts.
CONFIRM_WAIT = 2.0
#: How the API's connections are named in CLIENT LIST.
CLIENT_NAME = "tasklog-api"
#: Channels per SUBSCRIBE command when a session resubscribes everything.
_SUBSCRIBE_CHUNK = 500
_ERRORS = (RedisError, RedisClusterException, OSError)


class Subscription:
    """What one SSE client receives: parsed messages, or `RESYNC`, in a bounded buffer."""

    def __init__(self, task_id: str | None, maxlen: int) -> None:
        self.task_id = task_id  # None: every task change (the task list)
        self._maxlen = maxlen
        self._items: deque[Item] = deque()
        self._wake = asyncio.Event()
        self.overflowed = False
        self.closed = False
        #: Whether Redis confirmed this follower's channel in the current session: until then
        #: its stream polls Postgres.
        self.covered = task_id is None
        self._waiting = False

    def push(self, item: Item) -> None:
        if self.overflowed or self.closed:
            return
        if len(self._items) >= self._maxlen:
            self.overflowed = True
            self._items.clear()
            metrics.SSE_CUT_OFF.inc()
        else:
            self._items.append(item)
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def next_batch(self, timeout: float) -> list[Item]:
        """Everything buffered, waiting up to `timeout` seconds for something (else [])."""
        if not self._items and not self.closed and not self.overflowed:
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass
        return self.take()

    def take(self) -> list[Item]:
        """Everything buffered now, without waiting."""
        self._wake.clear()
        items = list(self._items)
        self._items.clear()
        return items


class Hub:
    """The pub/sub of one process; `run` is its supervised background task."""

    def __init__(
        self,
        redis_url: str | None,
        *,
        cluster: live.ClusterMode = "auto",
        retry_max: float = 5.0,
        ping_every: float = 5.0,
    ) -> None:
        self._url = redis_url
        self._mode: live.ClusterMode = cluster
        self._ping_every = ping_every
        self._retry_max = retry_max
        self._by_task: dict[str, set[Subscription]] = {}
        self._all: set[Subscription] = set()
        #: Messages dropped since the last warning, and when that was (`_drop`).
        self._dropped = 0
        self._drop_warned = -DROP_WARNING_INTERVAL
        self._session: _Session | None = None
        self._background: set[asyncio.Task[None]] = set()
        #: True while subscribed: streams may rely on pushes; otherwise they poll Postgres.
        self.live = False
        self.connected_event = asyncio.Event()
        self.reconnects = 0
        self.last_error: str | None = None
        # Commands (health, the watched set, the cluster's topology) go through their own
        # client, made once the server was asked whether it is a cluster.
        self._commands: live.Client | None = None
        self._connecting = asyncio.Lock()

    async def aclose(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._commands is not None:
            await self._commands.aclose()

    async def _client(self) -> live.Client:
        assert self._url is not None
        async with self._connecting:  # one client, however many ask at once
            if self._commands is None:
                self._commands = await live.connect(self._url, self._mode, name=CLIENT_NAME)
        return self._commands

    async def ping(self) -> dict[str, Any]:
        """Redis reachability for health checks: ``{"ok": bool, ...}``."""
        if self._url is None:
            return {"ok": None}
        try:
            client = await self._client()
            if isinstance(client, RedisCluster):
                info = await client.info("server", target_nodes=RedisCluster.RANDOM)
            else:
                info = await client.info("server")
        except _ERRORS as exc:
            return {"ok": False, "error": str(exc) or type(exc).__name__}
        return {"ok": True, "version": info.get("redis_version")}

    @property
    def configured(self) -> bool:
        return self._url is not None

    def clients(self) -> int:
        return len(self._all) + sum(len(subs) for subs in self._by_task.values())

    def followed(self) -> list[str]:
        """The tasks this process follows (their channels are held while connected)."""
        return list(self._by_task)

    @asynccontextmanager
    async def subscribe(self, task_id: str | None, maxlen: int) -> AsyncIterator[Subscription]:
        """Receive one task's lines and changes (or, with None, every task's changes).

        For a task, returns once Redis confirmed its channel (or after `CONFIRM_WAIT`; the
        subscription then receives `RESYNC` when the confirmation comes).
        """
        sub = Subscription(task_id, maxlen)
        if task_id is None:
            self._all.add(sub)
        else:
            subs = self._by_task.setdefault(task_id, set())
            subs.add(sub)
            if len(subs) == 1:
                self._in_background(self._mark_watched([task_id]), "redis-watch-mark")
        try:
            session = self._session
            if task_id is not None and session is not None:
                sub._waiting = True
                try:
                    sub.covered = await session.hold(lines_channel(task_id), CONFIRM_WAIT)
                finally:
                    sub._waiting = False
            yield sub
        finally:
            if task_id is None:
                self._all.discard(sub)
            else:
                subs = self._by_task.get(task_id, set())
                subs.discard(sub)
                if not subs:
                    self._by_task.pop(task_id, None)
                    if self._session is not None:
                        self._session.release(lines_channel(task_id))

    def close_all(self) -> None:
        """Shutdown: every stream ends now; clients resume elsewhere with Last-Event-ID."""
        for sub in self._every():
            sub.close()

    def _every(self) -> list[Subscription]:
        return [*self._all, *(s for subs in self._by_task.values() for s in subs)]

    def _resync_all(self) -> None:
        for sub in self._every():
            sub.push(RESYNC)

    def _in_background(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- the watched set ---------------------------------------------------------------------

    async def _mark_watched(self, task_ids: list[str]) -> None:
        """Tell the collectors these tasks are followed, for the next `WATCH_TTL` seconds."""
        if self._url is None or not task_ids:
            return
        try:
            client = await self._client()
            until = time.time() + WATCH_TTL
            for start in range(0, len(task_ids), _SUBSCRIBE_CHUNK):
                chunk = task_ids[start : start + _SUBSCRIBE_CHUNK]
                await client.zadd(WATCHED_KEY, dict.fromkeys(chunk, until))
        except _ERRORS as exc:
            # Lines then reach the followers through Postgres; the next refresh tries again.
            log.debug("cannot mark followed tasks in Redis: %s", exc)

    async def _keep_watched(self) -> None:
        """Refresh the marks of the followed tasks; drop everybody's expired marks."""
        while True:
            await asyncio.sleep(WATCH_TTL / 3)
            await self._mark_watched(self.followed())
            with contextlib.suppress(*_ERRORS):
                if self._commands is not None:
                    await self._commands.zremrangebyscore(WATCHED_KEY, "-inf", time.time())

    # -- the connection ----------------------------------------------------------------------

    async def run(self) -> None:
        """The hub's side tasks, supervised: the pub/sub link and the watched-set refresher.

        Each is restarted after a backoff whenever it fails, whatever the failure; while the
        link is down, `live` is False and `last_error` says why (/healthz: degraded).
        """
        if self._url is None:
            return
        async with asyncio.TaskGroup() as group:
            group.create_task(
                supervise.restarting(
                    "the Redis hub's watched-set refresher", self._keep_watched, logger=log
                ),
                name="redis-watch-refresh",
            )
            group.create_task(
                supervise.restarting(
                    "the Redis hub",
                    self._link,
                    max_delay=self._retry_max,
                    on_down=self._link_failed,
                    logger=log,
                ),
                name="redis-hub-link",
            )

    async def _link(self) -> None:
        """Connect, subscribe, dispatch; on a Redis error start over after a backoff.

        Redis going away is expected and handled here (one warning per outage); anything else
        propagates to the supervisor in `run`, which logs it and starts the link again.
        """
        assert self._url is not None
        delay = 0.1
        while True:
            try:
                session = _Session(self, await self._client(), self._url)
                self._session = session
                try:
                    await session.run()
                finally:
                    self._session = None
                    await session.aclose()
            except _ERRORS as exc:
                if self.live or self.last_error is None:
                    log.warning("Redis pub/sub lost (%s); streams poll Postgres meanwhile", exc)
                self.last_error = str(exc) or type(exc).__name__
            finally:
                was_live = self._went_down()
            if was_live:
                delay = 0.1
            metrics.HUB_RECONNECTS.inc()
            self.reconnects += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._retry_max)

    def _went_down(self) -> bool:
        """Streams fall back to Postgres until the link holds again; True if it was live."""
        was_live, self.live = self.live, False
        self.connected_event.clear()
        for sub in self._every():
            sub.covered = sub.task_id is None
        if was_live:
            self._resync_all()
        return was_live

    def _link_failed(self, exc: BaseException) -> None:
        """The supervisor's word that the link died of an unexpected error: degraded."""
        self.last_error = f"{type(exc).__name__}: {exc}"
        metrics.HUB_RECONNECTS.inc()
        self.reconnects += 1

    def _went_live(self) -> None:
        # Every channel holds: from now on nothing published is missed, and whatever was
        # published while away is in Postgres.
        log.info("Redis pub/sub subscribed (%d task channels)", len(self._by_task))
        self.live = True
        self.last_error = None
        self.connected_event.set()
        for sub in self._every():
            sub.covered = True
        self._resync_all()
        # A Redis that restarted may have lost the watched set: mark again now rather than
        # at the next refresh.
        self._in_background(self._mark_watched(self.followed()), "redis-watch-mark")

    def _confirmed(self, task_id: str) -> None:
        """A task channel subscribed after the session went live now holds."""
        for sub in self._by_task.get(task_id, ()):
            if not sub.covered:
                sub.covered = True
                if not sub._waiting:
                    sub.push(RESYNC)  # its replay ran before the channel held: read again

    def _drop(self, kind: str) -> None:
        """A message that is not what the collector publishes: dropped before it reaches any
        stream, counted, and warned about once a minute at most (whoever publishes it may
        publish many; its content is never logged)."""
        metrics.HUB_DROPPED.labels(kind).inc()
        self._dropped += 1
        now = time.monotonic()
        if now >= self._drop_warned + DROP_WARNING_INTERVAL:
            self._drop_warned = now
            log.warning(
                "dropped %d Redis message(s) on tasklog's channels that are not the collector's"
                " (last on the %s channel); is anything else publishing there? (see the Redis"
                " ACL in docs/deploy.md)",
                self._dropped,
                kind,
            )
            self._dropped = 0

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        name = channel.decode("utf-8", "replace")
        if name == TASKS_CHANNEL:
            self._on_task(data)
        elif name.startswith(LINES_CHANNEL_PREFIX):
            self._on_lines(name[len(LINES_CHANNEL_PREFIX) :], data)

    def _on_lines(self, task_id: str, data: bytes) -> None:
        metrics.HUB_MESSAGES.labels("lines").inc()
        subs = self._by_task.get(task_id)
        if not subs:
            return  # unsubscribed a moment ago: not even parsed
        payload = messages.decode_lines(data)
        if payload is None or payload["task_id"] != task_id:
            self._drop("lines")
            return
        for sub in subs:
            sub.push(payload)

    def _on_task(self, data: bytes) -> None:
        metrics.HUB_MESSAGES.labels("tasks").inc()
        payload = messages.decode_task(data)
        if payload is None:
            self._drop("tasks")
            return
        for sub in self._all:
            sub.push(payload)
        for sub in self._by_task.get(payload["task_id"], ()):
            sub.push(payload)


class _Session:
    """One spell of connection: the pub/sub links, the channels held, until the first error.

    Per channel it counts the (un)subscribe commands sent and not yet confirmed: Redis answers
    them in order, so a channel holds when the confirmation of its last command is a subscribe.
    """

    def __init__(self, hub: Hub, client: live.Client, url: str) -> None:
        self._hub = hub
        self._client = client
        self._url = url
        self._sharded = isinstance(client, RedisCluster)
        self._links: dict[str, _Link] = {}
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
            except _ERRORS as exc:
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

    def _by_link(self, channels: Iterable[str]) -> list[tuple[_Link, list[str]]]:
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
                self._links[name] = _Link(self, name, url, self._sharded, self._hub._ping_every)
            groups.setdefault(name, []).append(channel)
        return [(self._links[name], group) for name, group in groups.items()]

    def on_message(self, kind: str, channel: bytes, data: Any) -> None:
        if kind in ("message", "smessage"):
            self._hub._dispatch(channel, data)
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
            self._hub._confirmed(name[len(LINES_CHANNEL_PREFIX) :])

    def _check_started(self) -> None:
        if not self._starting and TASKS_CHANNEL in self._held and not self._hub.live:
            self._hub._went_live()

    def link_failed(self, exc: BaseException) -> None:
        self._fail(exc)


class _Link:
    """One pub/sub connection to one Redis node, read by a task of its own."""

    def __init__(
        self, session: _Session, name: str, url: str, sharded: bool, ping_every: float
    ) -> None:
        self._session = session
        self._sharded = sharded
        self._ping_every = ping_every
        self._client = aioredis.from_url(
            url, socket_connect_timeout=5, retry=Retry(NoBackoff(), 0), client_name=CLIENT_NAME
        )
        self._pubsub = self._client.pubsub()
        self._reader: asyncio.Task[None] | None = None
        self._name = name

    async def send(self, subscribe: bool, channels: list[str]) -> None:
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
        with contextlib.suppress(*_ERRORS):
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
