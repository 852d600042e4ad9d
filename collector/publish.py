"""The live path: after each commit, what was stored goes to Redis, in proportion to viewers.

Postgres is the truth; Redis only carries news. Every task that changed is published on the
tasks channel (its row, with ``last_seq``); a task's lines are published on its own channel
only while some API process follows it (the watched set, `tasklog.core.live`). A viewer never
depends on that: a task row announcing lines it was not sent makes its stream read them from
Postgres, so a task that became watched a moment ago still gets every line.

Whether a task is watched is asked once per batch for the tasks not asked recently
(``ZMSCORE``, one round trip), and the answers are kept for `WATCH_CACHE` seconds.

When Redis is down the collector keeps storing, warns once per outage, and publishes again
when it is back (readers backfill the gap from Postgres).
"""

from __future__ import annotations

import logging
import time

from collector.copydata import Rows, iso
from tasklog.core import live
from tasklog.core.constants import TASKS_CHANNEL, lines_channel
from tasklog.core.messages import LineMessage, encode, lines_message

log = logging.getLogger("tasklog.collector")

#: Seconds an answer of the watched set is trusted. A newly followed task waits at most this
#: long for its lines to be published (its stream reads them from Postgres meanwhile).
WATCH_CACHE = 0.25
#: How the collector's connections are named in CLIENT LIST.
CLIENT_NAME = "tasklog-collector"
#: Cached answers past which the expired ones are dropped.
_CACHE_MAX = 10_000


class Publisher:
    def __init__(self, url: str | None, cluster: live.ClusterMode = "auto") -> None:
        self._url = url
        self._mode = cluster
        self._client: live.Client | None = None
        #: task id -> (watched, monotonic time the answer expires)
        self._watched: dict[str, tuple[bool, float]] = {}
        self.down = False
        #: Batches whose news reached Redis.
        self.rounds = 0
        #: Redis messages sent (lines and task messages), for the live-path figures.
        self.messages = 0
        self.failures = 0

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def publish(self, lines: dict[str, list[Rows]], tasks: list[dict[str, object]]) -> None:
        """Lines stored per task (for the watched ones), then the tasks that changed."""
        if self._url is None or not (lines or tasks):
            return
        try:
            if self._client is None:
                self._client = await live.connect(self._url, self._mode, name=CLIENT_NAME)
            client = self._client
            watched = await self._watched_among(client, list(lines)) if lines else set()
            command = live.publish_command(client)
            sent = 0
            async with client.pipeline(transaction=False) as pipe:
                # Lines first: a reader that sees a task finish has already been sent its lines.
                for task_id in watched:
                    message = lines_message(task_id, line_messages(lines[task_id]))
                    pipe.execute_command(command, lines_channel(task_id), encode(message))
                    sent += 1
                for task in tasks:
                    pipe.execute_command(command, TASKS_CHANNEL, encode(task))
                    sent += 1
                await pipe.execute()
        except live.ERRORS as exc:
            self.failures += 1
            self._watched.clear()
            if not self.down:
                self.down = True
                log.warning(
                    "Redis unreachable, live updates paused (storage goes on): %s",
                    live.describe(exc),
                )
            return
        if self.down:
            self.down = False
            log.info("Redis reachable again, live updates resumed")
        self.rounds += 1
        self.messages += sent

    async def _watched_among(self, client: live.Client, task_ids: list[str]) -> set[str]:
        """The tasks of `task_ids` someone follows, asking Redis only about stale answers."""
        now = time.monotonic()
        ask = [t for t in task_ids if self._watched.get(t, (False, 0.0))[1] <= now]
        if ask:
            scores = await live.watched_scores(client, ask)
            deadline = time.time()
            if len(self._watched) > _CACHE_MAX:
                self._watched = {k: v for k, v in self._watched.items() if v[1] > now}
            for task_id, score in zip(ask, scores, strict=True):
                followed = score is not None and score > deadline
                self._watched[task_id] = (followed, now + WATCH_CACHE)
        return {t for t in task_ids if self._watched[t][0]}


def line_messages(pieces: list[Rows]) -> list[LineMessage]:
    """Stored lines as the live path sends them (`tasklog.core.messages.LineMessage`)."""
    return [
        {"seq": base + n, "ts": iso(t), "stream": stream, "level": level, "message": message}
        for _, base, lines in pieces
        for n, t, stream, level, message in lines
    ]
