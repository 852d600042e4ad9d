"""Helpers for the API tests: the API in-process, an SSE client, and a fake collector that
writes rows and publishes messages exactly as the collector's contract says."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import aiohttp
import psycopg
import redis.asyncio as aioredis
from aiohttp import ClientResponse, ClientTimeout, web
from aiohttp.test_utils import TestClient, TestServer

from api import keys
from api.app import create_app
from api.settings import ApiSettings
from tasklog.core.constants import (
    FINISHED_STATES,
    STARTED,
    STDOUT,
    SUCCESS,
    TASKS_CHANNEL,
    lines_channel,
)
from tasklog.core.messages import LineMessage, TaskMessage, encode, lines_message
from tests.helpers import Proc, ProcessFactory, free_port

PREFIX = "/tasklog"
#: The in-process API as the tests drive it (TestClient takes type parameters only from aiohttp
#: 3.11 on: the lowest release CI runs has none).
if TYPE_CHECKING:
    ApiClient = TestClient[web.Request, web.Application]
else:
    ApiClient = TestClient


def api_settings(database_url: str, redis_url: str | None, **extra: Any) -> ApiSettings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "redis_url": redis_url,
        "api_token": None,
        "api_poll_interval": 0.2,
        "api_sse_resync": 5.0,
        "api_sse_heartbeat": 5.0,
        **extra,
    }
    return ApiSettings(_env_file=None, **values)


@asynccontextmanager
async def running_api(settings: ApiSettings, *, wait_live: bool = True) -> AsyncIterator[ApiClient]:
    """The API on a free port, with its Redis subscription established (if asked)."""
    app = create_app(settings)
    async with TestClient(TestServer(app)) as client:
        if wait_live and settings.redis_url is not None:
            async with asyncio.timeout(10):
                await app[keys.HUB].connected_event.wait()
        yield client


@dataclass
class Event:
    id: str | None
    data: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.data["type"])


class SSEReader:
    """Reads events from an SSE response, one at a time, each wait bounded."""

    def __init__(self, response: ClientResponse) -> None:
        self.response = response
        self.heartbeats = 0

    async def next(self, timeout: float = 10) -> Event | None:
        """The next event, or None when the server closed the stream."""
        event_id: str | None = None
        data: list[str] = []
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    return None
                line = raw.decode().rstrip("\r\n")
                if line == "":
                    if data:
                        return Event(event_id, json.loads("\n".join(data)))
                    continue
                if line.startswith(":"):
                    self.heartbeats += 1
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "id":
                    event_id = value
                elif name == "data":
                    data.append(value)

    async def until(self, predicate: Any, timeout: float = 20) -> list[Event]:
        """Events up to and including the first one matching `predicate`."""
        seen: list[Event] = []
        async with asyncio.timeout(timeout):
            while True:
                event = await self.next(timeout)
                assert event is not None, f"stream closed before the awaited event; got {seen}"
                seen.append(event)
                if predicate(event):
                    return seen

    async def rest(self, timeout: float = 20) -> list[Event]:
        """Every event until the server closes the stream."""
        seen: list[Event] = []
        async with asyncio.timeout(timeout):
            while (event := await self.next(timeout)) is not None:
                seen.append(event)
        return seen


@asynccontextmanager
async def sse(
    client: ApiClient, path: str, headers: dict[str, str] | None = None
) -> AsyncIterator[SSEReader]:
    response = await client.get(
        path, headers=headers, timeout=ClientTimeout(total=None, sock_read=30)
    )
    assert response.status == 200, await response.text()
    try:
        yield SSEReader(response)
    finally:
        response.close()


def seqs(events: Iterable[Event]) -> list[int]:
    return [int(e.data["id"]) for e in events if e.type == "new_log"]


@dataclass
class FakeTask:
    task_id: str
    name: str = "demo.fake"
    state: str = STARTED
    progress: float | None = None
    last_seq: int = 0
    line_count: int = 0
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class FakeCollector:
    """Stores like the collector (one transaction per batch), then publishes like it."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], redis: aioredis.Redis | None) -> None:
        self.conn = conn
        self.redis = redis
        self.tasks: dict[str, FakeTask] = {}

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, database_url: str, redis_url: str | None
    ) -> AsyncIterator[FakeCollector]:
        conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
        # The collector makes a partition per day; a default one is enough for the fake.
        await conn.execute("CREATE TABLE IF NOT EXISTS lines_fake PARTITION OF lines DEFAULT")
        redis = aioredis.from_url(redis_url) if redis_url else None
        try:
            yield cls(conn, redis)
        finally:
            await conn.close()
            if redis is not None:
                await redis.aclose(close_connection_pool=True)

    async def start(
        self,
        task_id: str,
        name: str = "demo.fake",
        host: str = "host-a",
        created_at: datetime | None = None,
        publish: bool = True,
    ) -> FakeTask:
        task = FakeTask(task_id, name)
        self.tasks[task_id] = task
        await self.conn.execute(
            "INSERT INTO tasks (task_id, task_name, state, host, started_at, created_at)"
            " VALUES (%s, %s, %s, %s, %s, coalesce(%s, now()))",
            (task_id, name, task.state, host, task.started_at, created_at),
        )
        if publish:
            await self.publish_task(task)
        return task

    async def lines(
        self,
        task_id: str,
        messages: list[str],
        stream: str = STDOUT,
        *,
        publish: bool = True,
        progress: float | None = None,
        state: str | None = None,
    ) -> list[LineMessage]:
        """Store a batch (and maybe an end state) in one transaction, then publish it."""
        task = self.tasks[task_id]
        now = datetime.now(UTC)
        rows: list[LineMessage] = []
        for i, message in enumerate(messages, start=task.last_seq + 1):
            rows.append(
                {
                    "seq": i,
                    "ts": (now + timedelta(microseconds=i)).isoformat(),
                    "stream": stream,
                    "level": None,
                    "message": message,
                }
            )
        task.last_seq += len(rows)
        task.line_count += len(rows)
        if progress is not None:
            task.progress = progress
        if state is not None:
            task.state = state
        async with self.conn.transaction():
            async with self.conn.cursor().copy(
                "COPY lines (task_id, seq, ts, stream, level, message) FROM STDIN"
            ) as copy:
                for row in rows:
                    await copy.write_row(
                        (
                            task_id,
                            row["seq"],
                            row["ts"],
                            row["stream"],
                            row["level"],
                            row["message"],
                        )
                    )
            await self.conn.execute(
                "UPDATE tasks SET line_count = %s, last_seq = %s, progress = %s, state = %s,"
                " completed_at = CASE WHEN %s THEN now() END, updated_at = now()"
                " WHERE task_id = %s",
                (
                    task.line_count,
                    task.last_seq,
                    task.progress,
                    task.state,
                    task.state in FINISHED_STATES,
                    task_id,
                ),
            )
        if publish and self.redis is not None:
            if rows:
                await self.redis.publish(
                    lines_channel(task_id), encode(lines_message(task_id, rows))
                )
            await self.publish_task(task)
        return rows

    async def finish(
        self,
        task_id: str,
        state: str = SUCCESS,
        messages: list[str] | None = None,
        publish: bool = True,
    ) -> None:
        await self.lines(
            task_id,
            messages or [],
            state=state,
            progress=100 if state == SUCCESS else None,
            publish=publish,
        )

    async def publish_task(self, task: FakeTask) -> None:
        if self.redis is None:
            return
        message: TaskMessage = {
            "task_id": task.task_id,
            "task_name": task.name,
            "status": task.state,
            "progress": task.progress,
            "progress_message": None,
            "host": "host-a",
            "started_at": task.started_at.isoformat(),
            "completed_at": None,
            "parent_id": None,
            "root_id": None,
            "runtime": None,
            "line_count": task.line_count,
            "last_seq": task.last_seq,
            "exc_type": None,
            "exc_message": None,
        }
        await self.redis.publish(TASKS_CHANNEL, encode(message))


# -- the API as a real process ------------------------------------------------------------------


def start_api(
    procs: ProcessFactory, database_url: str, redis_url: str, **env: str
) -> tuple[Proc, str]:
    """`python -m tasklog api` on a free loopback port; returns it and its base URL."""
    port = free_port()
    full_env = {
        "TASKLOG_DATABASE_URL": database_url,
        "TASKLOG_REDIS_URL": redis_url,
        "TASKLOG_API_PORT": str(port),
        "TASKLOG_API_POLL_INTERVAL": "0.2",
        "TASKLOG_LOG_LEVEL": "INFO",
        **env,
    }
    proc = procs.start(
        "api", [sys.executable, "-m", "tasklog", "api"], env=full_env, ready="listening on http"
    )
    return proc, f"http://127.0.0.1:{port}"


@asynccontextmanager
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        yield session


@asynccontextmanager
async def follow(
    session: aiohttp.ClientSession, base: str, task_id: str
) -> AsyncIterator[SSEReader]:
    response = await session.get(f"{base}{PREFIX}/sse/task/{task_id}/")
    assert response.status == 200, await response.text()
    try:
        yield SSEReader(response)
    finally:
        response.close()


async def metric(session: aiohttp.ClientSession, base: str, name: str) -> float:
    """One sample of the API's Prometheus text (0 when absent)."""
    text = await (await session.get(f"{base}{PREFIX}/metrics")).text()
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0
