"""One follow loop for every kind of SSE stream: a task's, the task list's, a workflow's.

They differ only in what they read and how they frame it, which a `Source` says; the loop
says when: wait for the hub's news (`Subscription.next_batch`), hand it to the source, and
read Postgres instead (`Source.catch_up`) whenever the news cannot be trusted to be whole:
at the start, on `RESYNC` (Redis went away or came back), after a quiet spell (the resync
interval; the poll interval while the hub is down), and after Postgres failed
(`StoreUnavailable`: what was sent is sent, the rest comes once Postgres answers). The loop
ends when the client is gone, when it cannot keep up (its buffer overflowed: it resumes with
Last-Event-ID), or when the source is finished (a task that ended).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from api.hub import RESYNC, Item, Subscription
from api.settings import ApiSettings
from tasklog.core.errors import StoreUnavailable

log = logging.getLogger("tasklog.api.sse")

#: Writes per second an API process aims to stay under across its task streams: a write to a
#: socket, with the wake-up of the stream's task around it, costs ~30-60 us, and a task
#: printing 100 lines/s is ~40 messages/s per stream (a lines and a task message per commit).
#: With N streams open, a stream that was sent news gathers more for N / WRITE_RATE seconds
#: (1 stream: 125 us; 2,000 streams: 0.25 s) and writes it all at once, up to MAX_LINGER: at
#: most ~8,000 writes a second, a quarter of a core, whatever the number of clients.
WRITE_RATE = 8_000
MAX_LINGER = 0.25


class Source(Protocol):
    """What one stream reads and sends; `follow` decides when."""

    @property
    def what(self) -> str:
        """What the stream follows, for log lines ("task X", "the task list", "workflow X")."""

    @property
    def finished(self) -> bool:
        """True once nothing more will come (a finished task): the loop ends."""

    @property
    def news_while_behind(self) -> bool:
        """Whether news from Redis is sent while Postgres is away (the task list: a change is
        whole in its message), or dropped for Postgres to tell once it answers (lines: only
        Postgres knows they follow what was sent)."""

    async def catch_up(self) -> None:
        """Read Postgres and send everything not sent yet."""

    async def on_batch(self, batch: list[Item]) -> None:
        """Send live messages (never `RESYNC`: the loop catches up instead)."""


async def follow(
    source: Source,
    sub: Subscription,
    hub_live: Callable[[], bool],
    settings: ApiSettings,
    *,
    catch_up_first: bool = True,
    streams: Callable[[], int] | None = None,
    ride: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Follow `sub` for `source` until the client leaves, falls behind or the source is done.

    `catch_up_first`: read Postgres before waiting for news (a stream without a point to
    resume from starts with news alone). `streams`: how many streams the process serves; when
    given, a stream that news keeps coming to gathers it for a moment and writes it at once
    (`WRITE_RATE`). `ride`: called whenever the stream sent all its news while live, to let
    something else send for it (a task's broadcast) until it returns.
    """
    behind, first, flowing, waiting = catch_up_first, catch_up_first, False, False
    while not source.finished:
        if first:
            batch: list[Item] = []
            first = False
        else:
            live = hub_live() and not behind
            linger = min(MAX_LINGER, streams() / WRITE_RATE) if streams is not None else 0.0
            if live and flowing and linger >= 0.001:
                # News keeps coming: gather for `linger` and take it all in one wake-up,
                # rather than waking at the first message and sleeping again.
                await asyncio.sleep(linger)
                batch = sub.take()
                if not batch and not sub.closed and not sub.overflowed:
                    flowing = False  # a quiet moment: wait for news as below
                    continue
            else:
                batch = await sub.next_batch(
                    settings.api_sse_resync if live else settings.api_poll_interval
                )
                if live and batch and linger >= 0.001:
                    await asyncio.sleep(linger)
                    batch += sub.take()
            flowing = live and bool(batch)
        if sub.closed:
            return
        if sub.overflowed:
            log.info("cutting off a slow client of %s", source.what)
            return
        try:
            if behind and source.news_while_behind and batch and RESYNC not in batch:
                await source.on_batch(batch)  # Redis still brings news; Postgres is asked next
                batch = []
            if behind or not batch or RESYNC in batch:
                await source.catch_up()
            else:
                await source.on_batch(batch)
            behind = waiting = False
        except StoreUnavailable as exc:
            # What was sent is sent; the rest comes once Postgres answers.
            if not waiting:
                log.warning("stream of %s waits for Postgres: %s", source.what, exc)
            behind = waiting = True
        if ride is not None and not behind and not source.finished and hub_live():
            await ride()
