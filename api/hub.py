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

The connection itself (sessions and their per-node links) is `api.redislink`'s; every
client comes from the Redis boundary, `tasklog.core.live`, which also owns the watched set's
commands and says what a Redis error was in one line.

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

A task's followers that are in step are served by one subscription of their own kind, the
task's broadcast (`api.broadcast`): it is attached like any subscription (`attach`), and the
subscriptions of the followers it speaks for are paused (`pause`: nothing is pushed to them,
they stay counted and are still closed, resynced and marked covered with the others) until it
hands them back (`resume`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final, Literal

from api import metrics
from api.redislink import Session
from tasklog.core import live, messages, supervise
from tasklog.core.constants import (
    LINES_CHANNEL_PREFIX,
    TASKS_CHANNEL,
    WATCH_TTL,
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

    @property
    def pending(self) -> bool:
        """Whether anything is buffered, or the subscription ended (closed, overflowed)."""
        return bool(self._items) or self.closed or self.overflowed

    def wake(self) -> None:
        """Wake whoever waits in `wait` (or `next_batch`) without news."""
        self._wake.set()

    async def wait(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for a push, a `wake` or the end, taking nothing."""
        if not self.pending:
            self._wake.clear()  # a `wake` already seen
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

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
        #: Seconds of silence after which a pub/sub connection is pinged (`api.redislink`).
        self.ping_every = ping_every
        self._retry_max = retry_max
        self._by_task: dict[str, set[Subscription]] = {}
        #: Subscriptions a broadcast speaks for, by task (`pause`).
        self._paused: dict[str, set[Subscription]] = {}
        self._all: set[Subscription] = set()
        self._clients = 0
        #: Messages dropped since the last warning, and when that was (`_drop`).
        self._dropped = 0
        self._drop_warned = -DROP_WARNING_INTERVAL
        self._session: Session | None = None
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
            info = await live.server_info(client)
        except live.ERRORS as exc:
            return {"ok": False, "error": live.describe(exc)}
        return {"ok": True, "version": info.get("redis_version")}

    @property
    def configured(self) -> bool:
        return self._url is not None

    def clients(self) -> int:
        """The streams this process serves (`subscribe`'s subscriptions, paused or not)."""
        return self._clients

    def followed(self) -> list[str]:
        """The tasks this process follows (their channels are held while connected)."""
        return list(self._by_task.keys() | self._paused.keys())

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
            self._add(sub)
        self._clients += 1
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
            self._clients -= 1
            if task_id is None:
                self._all.discard(sub)
            else:
                self._remove(sub)

    def attach(self, sub: Subscription) -> None:
        """Push a task's messages to `sub` too (a broadcast), while its channel is held by a
        follower's `subscribe`."""
        assert sub.task_id is not None
        assert sub.task_id in self._by_task or sub.task_id in self._paused
        self._add(sub)

    def detach(self, sub: Subscription) -> None:
        self._remove(sub)

    def pause(self, sub: Subscription) -> None:
        """Push nothing more to `sub`: a broadcast speaks for it until `resume`."""
        assert sub.task_id is not None
        self._by_task.get(sub.task_id, set()).discard(sub)
        self._paused.setdefault(sub.task_id, set()).add(sub)

    def resume(self, sub: Subscription) -> None:
        """Push the task's messages to `sub` again, from now on."""
        assert sub.task_id is not None
        paused = self._paused.get(sub.task_id)
        if paused is None or sub not in paused:
            return
        paused.discard(sub)
        if not paused:
            del self._paused[sub.task_id]
        self._by_task.setdefault(sub.task_id, set()).add(sub)

    def _add(self, sub: Subscription) -> None:
        assert sub.task_id is not None
        first = sub.task_id not in self._by_task and sub.task_id not in self._paused
        self._by_task.setdefault(sub.task_id, set()).add(sub)
        if first:
            self._in_background(self._mark_watched([sub.task_id]), "redis-watch-mark")

    def _remove(self, sub: Subscription) -> None:
        task_id = sub.task_id
        assert task_id is not None
        for held in (self._by_task, self._paused):
            subs = held.get(task_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del held[task_id]
        if task_id not in self._by_task and task_id not in self._paused:
            if self._session is not None:
                self._session.release(lines_channel(task_id))

    def close_all(self) -> None:
        """Shutdown: every stream ends now; clients resume elsewhere with Last-Event-ID."""
        for sub in self._every():
            sub.close()

    def _every(self) -> list[Subscription]:
        return [
            *self._all,
            *(s for held in (self._by_task, self._paused) for subs in held.values() for s in subs),
        ]

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
            await live.mark_watched(await self._client(), task_ids, time.time() + WATCH_TTL)
        except live.ERRORS as exc:
            # Lines then reach the followers through Postgres; the next refresh tries again.
            log.debug("cannot mark followed tasks in Redis: %s", live.describe(exc))

    async def _keep_watched(self) -> None:
        """Refresh the marks of the followed tasks; drop everybody's expired marks."""
        while True:
            await asyncio.sleep(WATCH_TTL / 3)
            await self._mark_watched(self.followed())
            with contextlib.suppress(*live.ERRORS):
                if self._commands is not None:
                    await live.drop_expired_marks(self._commands)

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
                session = Session(self, await self._client(), self._url, CLIENT_NAME)
                self._session = session
                try:
                    await session.run()
                finally:
                    self._session = None
                    await session.aclose()
            except live.ERRORS as exc:
                if self.live or self.last_error is None:
                    log.warning(
                        "Redis pub/sub lost (%s); streams poll Postgres meanwhile",
                        live.describe(exc),
                    )
                self.last_error = live.describe(exc)
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

    def went_live(self) -> None:
        """The session's word that every channel holds."""
        # Every channel holds: from now on nothing published is missed, and whatever was
        # published while away is in Postgres.
        log.info("Redis pub/sub subscribed (%d task channels)", len(self.followed()))
        self.live = True
        self.last_error = None
        self.connected_event.set()
        for sub in self._every():
            sub.covered = True
        self._resync_all()
        # A Redis that restarted may have lost the watched set: mark again now rather than
        # at the next refresh.
        self._in_background(self._mark_watched(self.followed()), "redis-watch-mark")

    def confirmed(self, task_id: str) -> None:
        """The session's word that a task channel subscribed after it went live now holds."""
        for sub in [*self._by_task.get(task_id, ()), *self._paused.get(task_id, ())]:
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

    def dispatch(self, channel: bytes, data: bytes) -> None:
        """A message the session received on `channel`: to the subscriptions it is for."""
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
        for sub in list(subs):  # a broadcast may resume the subscriptions it spoke for
            sub.push(payload)

    def _on_task(self, data: bytes) -> None:
        metrics.HUB_MESSAGES.labels("tasks").inc()
        payload = messages.decode_task(data)
        if payload is None:
            self._drop("tasks")
            return
        for sub in self._all:
            sub.push(payload)
        for sub in list(self._by_task.get(payload["task_id"], ())):
            sub.push(payload)
