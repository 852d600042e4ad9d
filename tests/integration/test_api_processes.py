"""`tasklog api --workers 3`: one port, three processes, with the real worker and collector.

Which process serves a stream shows in Redis: each API process holds one pub/sub connection
(named `tasklog-api` in CLIENT LIST) with the tasks channel and the channels of the tasks its
own clients follow. Only the connections of the API processes this test started are counted
(by their sockets' addresses and the test's database number): a shared Redis holds others.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from api.hub import CLIENT_NAME
from tests.helpers import (
    Proc,
    ProcessFactory,
    free_port,
    pids_alive,
    socket_addresses,
    wait_for,
)
from tests.integration.api_support import PREFIX, SSEReader, http, seqs

pytestmark = pytest.mark.asyncio(loop_scope="session")

WORKERS = 3
READY = "workers listening on"


def start_workers(procs: ProcessFactory, database_url: str, redis_url: str) -> tuple[Proc, str]:
    port = free_port()
    env = {
        "TASKLOG_DATABASE_URL": database_url,
        "TASKLOG_REDIS_URL": redis_url,
        "TASKLOG_API_PORT": str(port),
        "TASKLOG_API_POLL_INTERVAL": "0.2",
        "TASKLOG_API_SHUTDOWN_TIMEOUT": "3",
    }
    proc = procs.start(
        "api",
        [sys.executable, "-m", "tasklog", "api", "--workers", str(WORKERS)],
        env=env,
        ready=READY,
        timeout=60,
    )
    return proc, f"http://127.0.0.1:{port}"


def api_connections(redis_url: str, api: Proc) -> list[int]:
    """Per process of `api`: how many channels its pub/sub connection holds."""
    client = redis.Redis.from_url(redis_url)
    try:
        db = str(client.connection_pool.connection_kwargs.get("db", 0))
        ours = socket_addresses([api.pid, *api.children()])
        return sorted(
            int(c["sub"])
            for c in client.client_list(_type="pubsub")
            if c.get("name") == CLIENT_NAME and c["addr"] in ours and c["db"] == db
        )
    finally:
        client.close()


async def test_three_workers_serve_every_stream_and_page(
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
) -> None:
    procs.collector(
        database_url=database_url, redis_url=redis_url, spool_dir=spool_dir, ready="following"
    )
    api, base = start_workers(procs, database_url, redis_url)
    procs.worker(redis_url=redis_url, spool_dir=spool_dir, pool="threads", concurrency=4)
    assert len(api.children()) == WORKERS
    await asyncio.to_thread(
        wait_for,
        lambda: api_connections(redis_url, api) == [1] * WORKERS,
        20,
        message="every API process to subscribe the tasks channel",
    )
    count = 200
    async with http() as session:
        # Streams for tasks not sent yet (they wait as PENDING), each on a connection of its
        # own, until every process serves some: the kernel spreads connections over them.
        streams: list[tuple[str, aiohttp.ClientResponse]] = []
        while min(api_connections(redis_url, api)) < 2 or len(streams) < 2 * WORKERS:
            assert len(streams) < 40, f"connections not spread: {api_connections(redis_url, api)}"
            task_id = str(uuid.uuid4())
            response = await session.get(f"{base}{PREFIX}/sse/task/{task_id}/")
            assert response.status == 200
            streams.append((task_id, response))
            await SSEReader(response).until(lambda e: e.type == "connected")
        spread = api_connections(redis_url, api)
        for task_id, _ in streams:
            celery_client.send_task(
                "demo.print_lines", kwargs={"count": count, "delay": 0.002}, task_id=task_id
            )
        results = await asyncio.gather(*(SSEReader(r).rest(timeout=120) for _, r in streams))
        for (task_id, response), events in zip(streams, results, strict=True):
            response.close()
            assert seqs(events) == list(range(1, count + 1)), task_id
            assert [e.data["message"] for e in events if e.type == "new_log"] == [
                f"line {i}" for i in range(1, count + 1)
            ]
            assert events[-1].type == "end"

        # Pages and JSON, each on a new connection, whichever process answers.
        for _ in range(3 * WORKERS):
            for path in ("/", f"/task/{streams[0][0]}/", "/api/tasks/", "/healthz"):
                async with aiohttp.ClientSession() as fresh:
                    response = await fresh.get(f"{base}{PREFIX}{path}")
                    assert response.status == 200, (path, await response.text())
    assert all(n >= 2 for n in spread), spread  # every process followed some task


async def test_sigterm_stops_every_worker_and_a_dead_worker_stops_the_set(
    procs: ProcessFactory, database_url: str, redis_url: str
) -> None:
    api, _ = start_workers(procs, database_url, redis_url)
    children = api.children()
    assert len(children) == WORKERS
    api.send_signal(signal.SIGTERM)
    assert api.wait(30) == 0
    assert pids_alive(children) == []

    api, _ = start_workers(procs, database_url, redis_url)
    children = api.children()
    os.kill(children[0], signal.SIGKILL)
    assert api.wait(30) == 2
    assert pids_alive(children) == []
    assert f"(pid {children[0]}) exited with code 137; stopped the others" in api.log_text()
