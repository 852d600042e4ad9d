"""Workflows: a chain + group + chord run by a real worker and stored by the real collector,
served whole by the API and `tasklog logs --root`, and followed live as one merged stream that
resumes across a disconnect without a gap or a duplicate."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ProcessFactory, pg_rows, wait_for
from tests.integration.api_support import PREFIX, Event, api_settings, running_api, sse
from tests.integration.test_api_e2e import start_pipeline
from tests.integration.test_search import tasklog

pytestmark = pytest.mark.asyncio(loop_scope="session")

WIDTH = 3
#: The starter, extract, the transforms and load.
TASKS = WIDTH + 3


def start_workflow(celery_client: Any, lines: int, delay: float) -> str:
    """A task that starts extract → (transform-0 | transform-1 | transform-2) → load (a chain
    whose group and last task make a chord); the id of that task, the workflow's root."""
    kwargs = {"width": WIDTH, "lines": lines, "delay": delay}
    return str(celery_client.send_task("demo.demo_workflow", kwargs=kwargs).id)


def body_of(database_url: str, root: str) -> str | None:
    rows = pg_rows(
        database_url,
        "SELECT task_id FROM tasks WHERE root_id = %s AND task_name = 'demo.wf_sum'",
        (root,),
    )
    return rows[0][0] if rows else None


def stored_lines(database_url: str, root: str) -> list[tuple[str, int, str]]:
    return [
        tuple(r)
        for r in pg_rows(
            database_url,
            "SELECT l.task_id, l.seq, l.message FROM lines l JOIN tasks t USING (task_id)"
            " WHERE t.root_id = %s ORDER BY l.task_id, l.seq",
            (root,),
        )
    ]


def all_done(database_url: str, root: str) -> bool:
    rows = pg_rows(
        database_url,
        "SELECT count(*) FILTER (WHERE state = 'SUCCESS'), count(*) FROM tasks WHERE root_id = %s",
        (root,),
    )
    return bool(rows[0][1] == TASKS and rows[0][0] == rows[0][1])


async def test_workflow_served_whole_by_api_and_cli(
    procs: ProcessFactory, database_url: str, redis_url: str, spool_dir: Path, celery_client: Any
) -> None:
    start_pipeline(procs, database_url, redis_url, redis_url, spool_dir)
    root = start_workflow(celery_client, lines=4, delay=0.0)
    await asyncio.to_thread(wait_for, lambda: all_done(database_url, root), 60, 0.1, "all done")
    body = body_of(database_url, root)
    assert body is not None

    async with running_api(api_settings(database_url, redis_url)) as client:
        response = await client.get(f"{PREFIX}/api/workflows/{root}/")
        assert response.status == 200, await response.text()
        workflow = await response.json()
        tasks = {t["task_id"]: t for t in workflow["tasks"]}
        assert workflow["root_id"] == root and not workflow["truncated"]
        assert len(tasks) == TASKS and body in tasks and root in tasks
        names = sorted(t["task_name"] for t in tasks.values())
        assert names == ["demo.demo_workflow"] + ["demo.wf_step"] * (WIDTH + 1) + ["demo.wf_sum"]
        assert all(t["status"] == "SUCCESS" and t["progress"] == 100 for t in tasks.values())
        assert all(t["root_id"] == root for t in tasks.values())
        # The tree holds together: every task but the root hangs under another of the workflow.
        assert tasks[root]["parent_id"] is None
        assert all(t["parent_id"] in tasks for i, t in tasks.items() if i != root)
        [extract] = [t for t in tasks.values() if t["parent_id"] == root]
        transforms = [t for t in tasks.values() if t["parent_id"] == extract["task_id"]]
        assert len(transforms) == WIDTH
        assert all(t["started_at"] and t["completed_at"] for t in tasks.values())

        missing = await client.get(f"{PREFIX}/api/workflows/no-such-root/")
        assert missing.status == 404
        detail = await client.get(f"{PREFIX}/task/{body}/")
        assert f"{PREFIX}/workflow/{root}/" in await detail.text(), "the log view links to it"

    expected = stored_lines(database_url, root)
    assert len(expected) == 1 + (WIDTH + 1) * 4 + 2
    out = await asyncio.to_thread(tasklog, database_url, "logs", "--root", root, "--json")
    got = [json.loads(x) for x in out.stdout.splitlines()]
    assert sorted((x["task_id"], x["seq"], x["message"]) for x in got) == expected
    times = [x["ts"] for x in got]
    assert times == sorted(times), "merged in time order"
    text = (await asyncio.to_thread(tasklog, database_url, "logs", "--root", root)).stdout
    assert f"{body[:8]} demo.wf_sum" in text and "load: total 9" in text
    failed = await asyncio.to_thread(tasklog, database_url, "logs", "--root", "nope", check=False)
    assert failed.returncode == 2 and "no task of workflow 'nope'" in failed.stderr


def line_events(events: list[Event]) -> list[tuple[str, int]]:
    return [(e.data["task_id"], int(e.data["id"])) for e in events if e.type == "new_log"]


async def test_workflow_stream_live_resumes_without_gap_or_duplicate(
    procs: ProcessFactory, database_url: str, redis_url: str, spool_dir: Path, celery_client: Any
) -> None:
    start_pipeline(procs, database_url, redis_url, redis_url, spool_dir)
    lines = 40
    total = 1 + (WIDTH + 1) * lines + 2
    root_id = start_workflow(celery_client, lines=lines, delay=0.02)
    # The terminal follows the same workflow from its start until every task is done.
    follow = asyncio.create_task(
        asyncio.to_thread(tasklog, database_url, "logs", "--root", root_id, "--follow", "--json")
    )
    async with running_api(api_settings(database_url, redis_url)) as client:
        # Connected before the workflow's first task is even stored: it joins as it comes.
        url = f"{PREFIX}/sse/workflow/{root_id}/"
        async with sse(client, url) as stream:
            first = await stream.until(
                lambda e: (
                    e.type == "new_log"
                    and len(line_events([e])) == 1
                    and e.data["task_id"] != root_id
                ),
                timeout=60,
            )  # a transform is printing: the group has started
            more = await stream.until(lambda e: e.type == "new_log", timeout=30)
            first += more
        last_id = [e.id for e in first if e.id][-1]
        assert last_id is not None
        seen = line_events(first)
        async with sse(client, url, headers={"Last-Event-ID": last_id}) as stream:
            rest: list[Event] = []
            while len(seen) + len(line_events(rest)) < total:
                event = await stream.next(timeout=60)
                assert event is not None
                rest.append(event)
        seen += line_events(rest)
        assert len(seen) == len(set(seen)) == total, "every line once"
        per_task: dict[str, list[int]] = defaultdict(list)
        for task_id, seq in seen:
            per_task[task_id].append(seq)
        assert all(seqs == list(range(1, len(seqs) + 1)) for seqs in per_task.values())
        body = body_of(database_url, root_id)
        assert len(per_task) == TASKS and body in per_task
        statuses = {e.data["task_id"]: e.data for e in first + rest if e.type == "status"}
        assert body in statuses and statuses[body]["task_name"] == "demo.wf_sum"
        await asyncio.to_thread(
            wait_for, lambda: all_done(database_url, root_id), 60, 0.1, "all done"
        )
        bad = await client.get(url, headers={"Last-Event-ID": "garbage"})
        assert bad.status == 400
    followed = [json.loads(x) for x in (await follow).stdout.splitlines()]
    assert sorted((x["task_id"], x["seq"]) for x in followed) == sorted(seen)
