"""The one Redis pub/sub connection of an API process, fanned out to every SSE client.

The hub subscribes to the tasks channel and to the pattern of all lines channels, and hands
each message to the subscriptions that want it (a lines message is parsed only when someone
follows that task). redis-py's asyncio pub/sub does not come back by itself after an outage,
so `Hub.run` is a reconnect-and-resubscribe loop. Whenever the connection is lost or comes
back, every subscription receives `RESYNC`: whatever was published meanwhile is in Postgres,
and the stream catches up from there.

Each subscription has its own bounded buffer: a client that cannot keep up overflows its own
buffer and is cut off (it resumes with Last-Event-ID) instead of slowing the others.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from api import metrics
from tasklog.core.constants import LINES_CHANNEL_PREFIX, TASKS_CHANNEL

log = logging.getLogger("tasklog.api.hub")

#: Pushed to every subscription when the Redis connection is lost or restored.
RESYNC: Final = "resync"


class Subscription:
    """What one SSE client receives: parsed messages, or `RESYNC`, in a bounded buffer."""

    def __init__(self, task_id: str | None, maxlen: int) -> None:
        self.task_id = task_id  # None: every task change (the task list)
        self._maxlen = maxlen
        self._items: deque[Any] = deque()
        self._wake = asyncio.Event()
        self.overflowed = False
        self.closed = False

    def push(self, item: Any) -> None:
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

    async def next_batch(self, timeout: float) -> list[Any]:
        """Everything buffered, waiting up to `timeout` seconds for something (else [])."""
        if not self._items and not self.closed and not self.overflowed:
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass
        self._wake.clear()
        items = list(self._items)
        self._items.clear()
        return items


class Hub:
    """One pub/sub connection per process; `run` is its supervised background task."""

    def __init__(
        self, redis_url: str | None, *, retry_max: float = 5.0, ping_every: float = 5.0
    ) -> None:
        self._url = redis_url
        self._ping_every = ping_every
        self._retry_max = retry_max
        self._by_task: dict[str, set[Subscription]] = {}
        self._all: set[Subscription] = set()
        #: True while subscribed: streams may rely on pushes; otherwise they poll Postgres.
        self.live = False
        self.connected_event = asyncio.Event()
        self.reconnects = 0
        self.last_error: str | None = None
        # Commands (PING, INFO for health) go through their own small client.
        self._commands = (
            aioredis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
            if redis_url
            else None
        )

    async def aclose(self) -> None:
        if self._commands is not None:
            await self._commands.aclose(close_connection_pool=True)

    async def ping(self) -> dict[str, Any]:
        """Redis reachability for health checks: ``{"ok": bool, ...}``."""
        if self._commands is None:
            return {"ok": None}
        try:
            info = await self._commands.info("server")
        except (RedisError, OSError) as exc:
            return {"ok": False, "error": str(exc) or type(exc).__name__}
        return {"ok": True, "version": info.get("redis_version")}

    @property
    def configured(self) -> bool:
        return self._url is not None

    def clients(self) -> int:
        return len(self._all) + sum(len(subs) for subs in self._by_task.values())

    @asynccontextmanager
    async def subscribe(self, task_id: str | None, maxlen: int) -> AsyncIterator[Subscription]:
        """Receive one task's lines and changes (or, with None, every task's changes)."""
        sub = Subscription(task_id, maxlen)
        if task_id is None:
            self._all.add(sub)
        else:
            self._by_task.setdefault(task_id, set()).add(sub)
        try:
            yield sub
        finally:
            if task_id is None:
                self._all.discard(sub)
            else:
                subs = self._by_task.get(task_id, set())
                subs.discard(sub)
                if not subs:
                    self._by_task.pop(task_id, None)

    def close_all(self) -> None:
        """Shutdown: every stream ends now; clients resume elsewhere with Last-Event-ID."""
        for sub in self._every():
            sub.close()

    def _every(self) -> list[Subscription]:
        return [*self._all, *(s for subs in self._by_task.values() for s in subs)]

    def _resync_all(self) -> None:
        for sub in self._every():
            sub.push(RESYNC)

    async def run(self) -> None:
        """Connect, subscribe, dispatch; on any Redis error start over after a backoff."""
        if self._url is None:
            return
        delay = 0.1
        while True:
            client = aioredis.from_url(
                self._url,
                socket_connect_timeout=5,
                retry=Retry(NoBackoff(), 0),
            )
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(TASKS_CHANNEL)
                    await pubsub.psubscribe(LINES_CHANNEL_PREFIX + "*")
                    await self._listen(pubsub)
            except (RedisError, OSError) as exc:
                if self.live or self.last_error is None:
                    log.warning("Redis pub/sub lost (%s); streams poll Postgres meanwhile", exc)
                self.last_error = str(exc) or type(exc).__name__
            finally:
                was_live, self.live = self.live, False
                self.connected_event.clear()
                await client.aclose(close_connection_pool=True)
            if was_live:
                delay = 0.1
                self._resync_all()
            metrics.HUB_RECONNECTS.inc()
            self.reconnects += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._retry_max)

    async def _listen(self, pubsub: aioredis.client.PubSub) -> None:
        confirmed = 0
        loop = asyncio.get_running_loop()
        last_seen = loop.time()
        ping_sent: float | None = None
        while True:
            message = await pubsub.get_message(timeout=self._ping_every)
            now = loop.time()
            if message is None:
                # A silent half-open connection would block forever: ping it, and give up on
                # it when the answer does not come.
                if ping_sent is not None and now - ping_sent > 2 * self._ping_every:
                    raise ConnectionError("Redis did not answer a PING")
                if ping_sent is None and now - last_seen >= self._ping_every:
                    await pubsub.ping()
                    ping_sent = now
                continue
            last_seen, ping_sent = now, None
            kind = message["type"]
            if kind in ("subscribe", "psubscribe"):
                confirmed += 1
                if confirmed == 2:
                    # Both subscriptions hold: from now on nothing published is missed, and
                    # whatever was published while away is in Postgres.
                    log.info("Redis pub/sub subscribed")
                    self.live = True
                    self.last_error = None
                    self.connected_event.set()
                    self._resync_all()
            elif kind == "pmessage":
                self._on_lines(message["channel"], message["data"])
            elif kind == "message":
                self._on_task(message["data"])

    def _on_lines(self, channel: bytes, data: bytes) -> None:
        metrics.HUB_MESSAGES.labels("lines").inc()
        task_id = channel[len(LINES_CHANNEL_PREFIX) :].decode("utf-8", "replace")
        subs = self._by_task.get(task_id)
        if not subs:
            return  # nobody follows this task here: not even parsed
        payload = self._parse(data)
        if payload is not None:
            for sub in subs:
                sub.push(payload)

    def _on_task(self, data: bytes) -> None:
        metrics.HUB_MESSAGES.labels("tasks").inc()
        payload = self._parse(data)
        if payload is None:
            return
        for sub in self._all:
            sub.push(payload)
        for sub in self._by_task.get(str(payload.get("task_id")), ()):
            sub.push(payload)

    @staticmethod
    def _parse(data: bytes) -> dict[str, Any] | None:
        try:
            payload = json.loads(data)
        except ValueError:
            log.warning("ignoring a message that is not JSON: %.80r", data)
            return None
        return payload if isinstance(payload, dict) else None
