"""The API on a read replica (TASKLOG_API_READ_URL) that lags 2 s behind its primary
(`recovery_min_apply_delay`): pages read the replica, and a live stream still sends every line
exactly once, then `end` — what the replica does not show yet comes from the primary."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ProcessFactory, pg_rows, wait_for
from tests.integration.api_support import PREFIX, follow, http, metric, seqs, start_api
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
            lambda: lines_on(replica, second.id) == LINES,
            30,
            0.1,
            "the replica catching up",
        )
        detail = await (await session.get(f"{base}{PREFIX}/api/tasks/{second.id}/")).json()
        assert detail["status"] == "SUCCESS" and len(detail["logs"]) == LINES
