"""Task states have one owner (`tasklog.core.constants`): SQL, the API and the CLI agree with it.

The user-visible case: a task that ends with `raise Ignore()` (or `raise Reject(requeue=True)`,
its message acknowledged already) is over. It
is stored IGNORED (REJECTED), the API reports it finished and filters on its state, its stream
ends, and `tasklog logs -f` returns.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tasklog.core.constants import FINISHED_STATES, IGNORED, REJECTED, STATES
from tests.helpers import ProcessFactory, pg_rows, tasklog_cli, wait_for
from tests.integration.api_support import PREFIX, api_settings, running_api, sse


def test_sql_knows_the_finished_states_of_python(database_url: str) -> None:
    for state in [*STATES, "DOWNLOADING", "success", ""]:
        ((finished,),) = pg_rows(database_url, "SELECT tasklog_finished(%s)", (state,))
        assert finished is (state in FINISHED_STATES), (
            f"tasklog_finished({state!r}) in SQL disagrees with FINISHED_STATES: add a "
            "migration that replaces the function (see 0003_task_states.sql)"
        )


def _state(database_url: str, task_id: str) -> str | None:
    rows = pg_rows(database_url, "SELECT state FROM tasks WHERE task_id = %s", (task_id,))
    return rows[0][0] if rows else None


@pytest.mark.asyncio(loop_scope="session")
async def test_ignored_and_rejected_tasks_are_finished_for_the_api_and_the_cli(
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
) -> None:
    procs.collector(
        database_url=database_url, spool_dir=spool_dir, redis_url=redis_url, ready="following"
    )
    procs.worker(redis_url=redis_url, spool_dir=spool_dir, pool="prefork", concurrency=2)
    # Neither task stores a result: wait on what the collector stored, not on the result.
    ignored = celery_client.send_task("demo.ignored_task", kwargs={"lines": 3}).id
    rejected = celery_client.send_task("demo.rejected_task").id
    await asyncio.to_thread(
        wait_for,
        lambda: (
            _state(database_url, ignored) == IGNORED and _state(database_url, rejected) == REJECTED
        ),
        60,
        0.1,
        "the tasks stored IGNORED and REJECTED",
    )

    env = {"TASKLOG_DATABASE_URL": database_url}
    follow = await asyncio.to_thread(tasklog_cli, "logs", "-f", ignored, env=env, timeout=30)
    assert follow.returncode == 0, follow.stderr
    assert [line.split(" | ")[1] for line in follow.stdout.splitlines()] == [
        "before ignore 1",
        "before ignore 2",
        "before ignore 3",
    ]
    listed = await asyncio.to_thread(tasklog_cli, "tasks", "--state", "ignored", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(row)["task_id"] for row in listed.stdout.splitlines()] == [ignored]

    async with running_api(api_settings(database_url, redis_url)) as client:
        for task_id, state in ((ignored, IGNORED), (rejected, REJECTED)):
            detail = await client.get(f"{PREFIX}/api/tasks/{task_id}/")
            assert detail.status == 200
            body = await detail.json()
            assert body["status"] == state and body["finished"] is True
            response = await client.get(f"{PREFIX}/api/tasks/?state={state}")
            assert response.status == 200, await response.text()
            found = await response.json()
            assert [t["task_id"] for t in found["results"]] == [task_id]
            assert found["results"][0]["finished"] is True
        async with sse(client, f"{PREFIX}/sse/task/{ignored}/") as stream:
            events = await stream.rest(timeout=20)
    assert [e.type for e in events][-2:] == ["status", "end"]
    assert events[-2].data["status"] == IGNORED and events[-2].data["finished"] is True
    assert [e.data["message"] for e in events if e.type == "new_log"] == [
        "before ignore 1",
        "before ignore 2",
        "before ignore 3",
    ]


@pytest.mark.asyncio(loop_scope="session")
async def test_a_custom_state_filters_the_task_list_like_celerys_own(
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
) -> None:
    """`update_state(state="Downloading")`: the task list filters on it, in the API and the
    CLI, matched as written; a state name no task could hold is a clear 400 / one line."""
    procs.collector(
        database_url=database_url, spool_dir=spool_dir, redis_url=redis_url, ready="following"
    )
    procs.worker(redis_url=redis_url, spool_dir=spool_dir, pool="solo")
    task_id = celery_client.send_task(
        "demo.progress_task", kwargs={"steps": 1, "delay": 120, "state": "Downloading"}
    ).id
    await asyncio.to_thread(
        wait_for,
        lambda: _state(database_url, task_id) == "Downloading",
        60,
        0.1,
        "the task stored in its custom state",
    )
    env = {"TASKLOG_DATABASE_URL": database_url}
    listed = await asyncio.to_thread(
        tasklog_cli, "tasks", "--state", "Downloading,FAILURE", "--json", env=env
    )
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(row)["task_id"] for row in listed.stdout.splitlines()] == [task_id]
    too_long = "X" * 33
    refused = await asyncio.to_thread(tasklog_cli, "tasks", "--state", too_long, env=env)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert refused.stderr.count("\n") == 1 and "custom state of at most 32" in refused.stderr

    async with running_api(api_settings(database_url, redis_url)) as client:
        response = await client.get(f"{PREFIX}/api/tasks/?state=Downloading")
        assert response.status == 200, await response.text()
        assert [row["task_id"] for row in (await response.json())["results"]] == [task_id]
        response = await client.get(f"{PREFIX}/api/tasks/?state=downloading")  # as written
        assert (await response.json())["results"] == []
        response = await client.get(f"{PREFIX}/api/tasks/?state={too_long}")
        assert response.status == 400
        assert "custom state of at most 32" in (await response.json())["error"]
