"""The API with the real pipeline: a Celery worker, the collector, Postgres and Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ProcessFactory, pg_rows, wait_for
from tests.integration.api_support import PREFIX, api_settings, running_api, seqs, sse

pytestmark = pytest.mark.asyncio(loop_scope="session")


def last_seq(database_url: str, task_id: str) -> int:
    rows = pg_rows(database_url, "SELECT last_seq FROM tasks WHERE task_id = %s", (task_id,))
    return int(rows[0][0]) if rows else 0


async def wait_stored(database_url: str, task_id: str, seq: int) -> None:
    await asyncio.to_thread(
        wait_for,
        lambda: last_seq(database_url, task_id) >= seq,
        60,
        0.05,
        f"task {task_id} stored up to seq {seq}",
    )


def start_pipeline(
    procs: ProcessFactory, database_url: str, broker_url: str, publish_url: str, spool_dir: Path
) -> None:
    procs.collector(
        database_url=database_url, redis_url=publish_url, spool_dir=spool_dir, ready="following"
    )
    procs.worker(redis_url=broker_url, spool_dir=spool_dir, pool="threads", concurrency=2)


async def test_list_and_detail_of_real_tasks(
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
) -> None:
    start_pipeline(procs, database_url, redis_url, redis_url, spool_dir)
    quick = celery_client.send_task("demo.demo_quick_task")
    failing = celery_client.send_task("demo.demo_failing_task")
    lines = celery_client.send_task("demo.print_lines", kwargs={"count": 30, "stderr_every": 10})
    ids = [quick.id, failing.id, lines.id]
    await asyncio.to_thread(
        wait_for,
        lambda: (
            len(
                pg_rows(
                    database_url,
                    "SELECT 1 FROM tasks WHERE task_id = ANY(%s) AND tasklog_finished(state)",
                    (ids,),
                )
            )
            == 3
        ),
        60,
        0.1,
        "three finished tasks",
    )
    async with running_api(api_settings(database_url, redis_url)) as client:
        listed = await (await client.get(f"{PREFIX}/api/tasks/")).json()
        assert {t["task_id"] for t in listed["results"]} == set(ids)
        host = listed["results"][0]["host"]  # the worker's host, from its start record
        assert host
        failed = await (await client.get(f"{PREFIX}/api/tasks/?state=FAILURE")).json()
        assert [t["task_id"] for t in failed["results"]] == [failing.id]
        named = await (await client.get(f"{PREFIX}/api/tasks/?name=demo.print_lines")).json()
        assert [t["task_id"] for t in named["results"]] == [lines.id]
        hosted = await (await client.get(f"{PREFIX}/api/tasks/?host={host}&limit=2")).json()
        assert len(hosted["results"]) == 2 and hosted["next"]

        detail = await (await client.get(f"{PREFIX}/api/tasks/{failing.id}/")).json()
        assert detail["status"] == "FAILURE" and detail["exc_type"]
        assert "About to fail" in [x["message"] for x in detail["logs"]]
        detail = await (await client.get(f"{PREFIX}/api/tasks/{lines.id}/?limit=10")).json()
        assert [x["message"] for x in detail["logs"]] == [f"line {i}" for i in range(1, 11)]
        assert detail["logs"][9]["stream"] == "stderr"
        page2 = await (await client.session.get(detail["next"])).json()
        assert page2["logs"][0]["id"] == 11


async def test_stream_joined_mid_task_gets_every_line_once_across_a_disconnect(
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
) -> None:
    start_pipeline(procs, database_url, redis_url, redis_url, spool_dir)
    count = 300
    task = celery_client.send_task("demo.print_lines", kwargs={"count": count, "delay": 0.01})
    async with running_api(api_settings(database_url, redis_url)) as client:
        await wait_stored(database_url, task.id, 40)  # the task is running: join now
        async with sse(client, f"{PREFIX}/sse/task/{task.id}/") as stream:
            first = await stream.until(lambda e: e.type == "new_log" and e.data["id"] >= 120)
        # A forced disconnect: resume as a browser does, with Last-Event-ID.
        got = seqs(first)
        async with sse(
            client, f"{PREFIX}/sse/task/{task.id}/", headers={"Last-Event-ID": str(got[-1])}
        ) as stream:
            rest = await stream.rest(timeout=60)
    received = got + seqs(rest)
    assert received == list(range(1, count + 1))
    messages = [e.data["message"] for e in first + rest if e.type == "new_log"]
    assert messages == [f"line {i}" for i in range(1, count + 1)]
    assert rest[-1].type == "end"
    assert [e.data["status"] for e in rest if e.type == "status"][-1] == "SUCCESS"
