"""A failed task's traceback and a retried task's runs, from a real worker through the real
collector, in the JSON detail and in `tasklog logs`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ProcessFactory, pg_rows, wait_for
from tests.integration.api_support import PREFIX, api_settings, running_api
from tests.integration.test_api_e2e import start_pipeline
from tests.integration.test_search import tasklog

pytestmark = pytest.mark.asyncio(loop_scope="session")


def finished(database_url: str, ids: list[str]) -> bool:
    rows = pg_rows(
        database_url,
        "SELECT count(*) FROM tasks WHERE task_id = ANY(%s) AND tasklog_finished(state)",
        (ids,),
    )
    return bool(rows[0][0] == len(ids))


async def test_traceback_and_runs_in_detail_and_cli(
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
) -> None:
    start_pipeline(procs, database_url, redis_url, redis_url, spool_dir)
    failing = celery_client.send_task("demo.demo_failing_task").id
    retried = celery_client.send_task("demo.retry_task").id
    await asyncio.to_thread(
        wait_for, lambda: finished(database_url, [failing, retried]), 60, 0.1, "both tasks done"
    )

    # The failure: its lines, then its exception and traceback, marked as such.
    out = (await asyncio.to_thread(tasklog, database_url, "logs", failing)).stdout.splitlines()
    assert out[0].endswith("| About to fail")
    assert out[1] == "── FAILURE: Exception: Demo failure ──"
    assert out[2] == "Traceback (most recent call last):"
    assert any('tasklog/demo/tasks.py", line' in line for line in out)
    assert any("site-packages/celery" in line for line in out), "library frames are kept too"
    assert out[-1] == "Exception: Demo failure"
    raw = (await asyncio.to_thread(tasklog, database_url, "logs", failing, "--json")).stdout
    *lines, last = [json.loads(x) for x in raw.splitlines()]
    assert [x["message"] for x in lines] == ["About to fail"]
    assert last["type"] == "exception" and last["state"] == "FAILURE"
    assert last["exc_type"] == "Exception" and last["exc_message"] == "Demo failure"
    assert last["traceback"].startswith("Traceback (most recent call last):")

    # The retried task: two runs, each with its own header and its own lines.
    out = (await asyncio.to_thread(tasklog, database_url, "logs", retried)).stdout.splitlines()
    assert len(out) == 4, out
    assert out[0].startswith("── run 1 of 2 · ") and " · RETRY" in out[0]
    assert out[1].endswith("| attempt 0")
    assert out[2].startswith("── run 2 of 2 · ") and " · SUCCESS" in out[2]
    assert out[3].endswith("| attempt 1")
    raw = (await asyncio.to_thread(tasklog, database_url, "logs", retried, "--json")).stdout
    assert [(x["run"], x["message"]) for x in map(json.loads, raw.splitlines())] == [
        (0, "attempt 0"),
        (1, "attempt 1"),
    ]
    # A task that succeeded has no exception object, and a lone run no header.
    async with running_api(api_settings(database_url, redis_url)) as client:
        detail = await (await client.get(f"{PREFIX}/api/tasks/{failing}/")).json()
        assert detail["traceback"].rstrip().endswith("Exception: Demo failure")
        assert [r["state"] for r in detail["runs"]] == ["FAILURE"]
        detail = await (await client.get(f"{PREFIX}/api/tasks/{retried}/")).json()
        runs = detail["runs"]
        assert [(r["run"], r["first_seq"], r["state"]) for r in runs] == [
            (0, 1, "RETRY"),
            (1, 2, "SUCCESS"),
        ]
        assert all(r["host"] for r in runs) and runs[1]["runtime"] is not None
