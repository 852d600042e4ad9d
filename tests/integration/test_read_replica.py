"""The API on a read replica (TASKLOG_API_READ_URL) that lags 2 s behind its primary
(`recovery_min_apply_delay`): pages read the replica, and a live stream still sends every line
exactly once, then `end` — what the replica does not show yet comes from the primary."""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ProcessFactory, pg_rows, wait_for
from tests.integration.api_support import (
    PREFIX,
    SSEReader,
    follow,
    http,
    metric,
    seqs,
    start_api,
)
from tests.replication import ReplicatedPostgres

pytestmark = pytest.mark.slow

LINES = 300
DELAY_MS = 2000


def lines_on(url: str, task_id: str) -> int:
    return int(pg_rows(url, "SELECT count(*) FROM lines WHERE task_id = %s", (task_id,))[0][0])


async def test_viewers_of_a_lagging_replica_get_every_line_once_then_end(
    replicated_pg: Callable[..., ReplicatedPostgres],
    procs: ProcessFactory,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
) -> None:
    pair = replicated_pg(synchronous=False, apply_delay_ms=DELAY_MS)
    primary, replica = pair.primary_url(), pair.standby_url()
    procs.collector(
        database_url=primary, redis_url=redis_url, spool_dir=spool_dir, ready="following"
    )
    procs.worker(redis_url=redis_url, spool_dir=spool_dir, pool="threads", concurrency=2)
    _, base = start_api(procs, primary, redis_url, TASKLOG_API_READ_URL=replica)

    task = celery_client.send_task("demo.print_lines", kwargs={"count": LINES, "delay": 0.01})
    await asyncio.to_thread(
        wait_for,
        lambda: lines_on(primary, task.id) >= 50,
        30,
        0.02,
        "the task half-way on the primary",
    )
    async with http() as session:
        # Joined mid-task: the replica is seconds behind what Redis announces.
        async with follow(session, base, task.id) as early:
            events = await early.rest(timeout=60)
        assert seqs(events) == list(range(1, LINES + 1))
        assert events[-1].type == "end" and events[-1].data["last_seq"] == LINES

        # Joined once the task finished, before the replica shows its end.
        second = celery_client.send_task("demo.print_lines", kwargs={"count": LINES})
        await asyncio.to_thread(
            wait_for,
            lambda: (
                pg_rows(primary, "SELECT state FROM tasks WHERE task_id = %s", (second.id,))
                == [("SUCCESS",)]
            ),
            30,
            0.02,
            "the second task finished on the primary",
        )
        assert lines_on(replica, second.id) < LINES  # the replica lags indeed
        async with follow(session, base, second.id) as late:
            events = await late.rest(timeout=60)
        assert seqs(events) == list(range(1, LINES + 1))
        assert events[-1].type == "end" and events[-1].data["last_seq"] == LINES

        assert await metric(session, base, "tasklog_api_replica_fill_ins_total") >= 1
        # Pages read the replica: the finished task shows there once it caught up.
        await asyncio.to_thread(
            wait_for,
            lambda: (
                pg_rows(replica, "SELECT state FROM tasks WHERE task_id = %s", (second.id,))
                == [("SUCCESS",)]
            ),
            30,
            0.1,
            "the replica catching up",
        )
        detail = await (await session.get(f"{base}{PREFIX}/api/tasks/{second.id}/")).json()
        assert detail["status"] == "SUCCESS" and len(detail["logs"]) == LINES


async def test_the_task_list_from_a_lagging_replica_misses_no_change(
    replicated_pg: Callable[..., ReplicatedPostgres],
    procs: ProcessFactory,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
) -> None:
    """The list page is rendered from a replica 5 s behind: a task that finished before the
    page shows as finished through the page's stream once the replica has it (the stream
    resumes from the replica's replay time, not from the clock)."""
    pair = replicated_pg(synchronous=False, apply_delay_ms=5000)
    primary, replica = pair.primary_url(), pair.standby_url()
    procs.collector(
        database_url=primary, redis_url=redis_url, spool_dir=spool_dir, ready="following"
    )
    procs.worker(redis_url=redis_url, spool_dir=spool_dir, pool="threads", concurrency=2)
    _, base = start_api(
        procs, primary, redis_url, TASKLOG_API_READ_URL=replica, TASKLOG_API_SSE_RESYNC="1"
    )
    task = celery_client.send_task("demo.print_lines", kwargs={"count": 5})
    state = "SELECT state FROM tasks WHERE task_id = %s"
    await asyncio.to_thread(
        wait_for,
        lambda: pg_rows(primary, state, (task.id,)) == [("SUCCESS",)],
        30,
        0.02,
        "the task finished on the primary",
    )
    # Past the stream's 2 s slack, and still before the replica shows the task.
    await asyncio.to_thread(
        wait_for,
        lambda: (
            pg_rows(
                primary,
                "SELECT now() - updated_at > interval '2500 ms' FROM tasks WHERE task_id = %s",
                (task.id,),
            )
            == [(True,)]
        ),
        10,
        0.05,
        "2.5 s since the task's last change",
    )
    assert pg_rows(replica, state, (task.id,)) != [("SUCCESS",)]
    async with http() as session:
        page = await (await session.get(f"{base}{PREFIX}/")).text()
        found = re.search(r'data-sse="([^"]+)"', page)
        assert found is not None
        stream_path = html.unescape(found.group(1))
        async with session.get(f"http://127.0.0.1:{base.rsplit(':', 1)[1]}{stream_path}") as got:
            assert got.status == 200
            reader = SSEReader(got)
            statuses: list[Any] = []

            def finished(event: Any) -> bool:
                if event.type == "status" and event.data.get("task_id") == task.id:
                    statuses.append(event.data.get("status"))
                return statuses[-1:] == ["SUCCESS"]

            try:
                await reader.until(finished, timeout=30)
            except TimeoutError:
                raise AssertionError(
                    f"the task's status events on the list's stream: {statuses} ({stream_path})"
                ) from None
