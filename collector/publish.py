"""The live path: after each commit, what was stored goes to Redis.

Postgres is the truth; Redis only carries news. When Redis is down the collector keeps
storing, warns once per outage, and publishes again when it is back (readers backfill the gap
from Postgres).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tasklog.core.constants import TASKS_CHANNEL, lines_channel

log = logging.getLogger("tasklog.collector")


class Publisher:
    def __init__(self, url: str | None) -> None:
        self._client = (
            aioredis.from_url(url, socket_timeout=2, socket_connect_timeout=2) if url else None
        )
        self.down = False
        self.published = 0
        self.failures = 0

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.aclose(close_connection_pool=True)

    async def publish(
        self, lines: dict[str, list[dict[str, Any]]], tasks: list[dict[str, Any]]
    ) -> None:
        """Lines stored per task, then the tasks that changed."""
        if self._client is None or not (lines or tasks):
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                # Lines first: a reader that sees a task finish has already been sent its lines.
                for task_id, task_lines in lines.items():
                    message = {"task_id": task_id, "lines": task_lines}
                    pipe.publish(lines_channel(task_id), _dumps(message))
                for task in tasks:
                    pipe.publish(TASKS_CHANNEL, _dumps(task))
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self.failures += 1
            if not self.down:
                self.down = True
                log.warning("Redis unreachable, live updates paused (storage goes on): %s", exc)
            return
        if self.down:
            self.down = False
            log.info("Redis reachable again, live updates resumed")
        self.published += 1


def _default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _dumps(obj: object) -> bytes | str:
    # A batch's lines are published as they are stored: orjson writes them ~5x faster.
    try:
        return orjson.dumps(obj, default=_default)
    except orjson.JSONEncodeError:  # what orjson refuses (an int past 64 bits…), json may not
        return json.dumps(obj, default=_default, ensure_ascii=False, separators=(",", ":"))
