"""One task-id limit everywhere (`tasklog.core.constants.MAX_TASK_ID_BYTES`, bytes of UTF-8):
an id the spool carries is listed, shown, streamed and printed; one byte more is a clear 400
from the API and one line from the CLI."""

from __future__ import annotations

import asyncio
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from tasklog.core.constants import MAX_TASK_ID_BYTES
from tests.helpers import ProcessFactory, pg_rows, tasklog_cli, wait_for
from tests.integration.api_support import PREFIX, api_settings, running_api, sse

pytestmark = pytest.mark.asyncio(loop_scope="session")

#: 300 characters: more than the API once took (255), far less than the limit.
LONG = "long-" + "x" * 295
#: Exactly the limit, in two-byte characters: 512 characters, 1024 bytes.
AT_LIMIT = "é" * (MAX_TASK_ID_BYTES // 2)
#: One byte over.
OVER = AT_LIMIT + "x"


def _path(task_id: str) -> str:
    return urllib.parse.quote(task_id, safe="")


def _stored(database_url: str, ids: list[str]) -> bool:
    rows = pg_rows(
        database_url,
        "SELECT count(*) FROM tasks WHERE task_id = ANY(%s) AND state = 'SUCCESS'",
        (ids,),
    )
    return bool(rows[0][0] == len(ids))


async def test_ids_up_to_the_limit_work_everywhere_and_one_byte_more_is_a_clear_error(
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
) -> None:
    assert len(LONG) == 300 and len(AT_LIMIT.encode()) == MAX_TASK_ID_BYTES
    procs.collector(
        database_url=database_url, spool_dir=spool_dir, redis_url=redis_url, ready="following"
    )
    procs.worker(redis_url=redis_url, spool_dir=spool_dir, pool="threads", concurrency=2)
    ids = [LONG, AT_LIMIT]
    for task_id in ids:
        celery_client.send_task(
            "demo.print_text", args=(f"hello {len(task_id)}\n",), task_id=task_id
        )
    await asyncio.to_thread(wait_for, lambda: _stored(database_url, ids), 60, 0.1, "both stored")

    env = {"TASKLOG_DATABASE_URL": database_url}
    for task_id in ids:
        shown = await asyncio.to_thread(tasklog_cli, "logs", task_id, env=env)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.rstrip("\n").endswith(f"| hello {len(task_id)}")
    over = await asyncio.to_thread(tasklog_cli, "logs", OVER, env=env)
    assert over.returncode == 2 and "Traceback" not in over.stderr
    assert over.stderr == (
        f"tasklog: TASK_ID: the id is {MAX_TASK_ID_BYTES + 1} bytes long "
        f"(at most {MAX_TASK_ID_BYTES})\n"
    )

    async with running_api(api_settings(database_url, redis_url)) as client:
        listed = await (await client.get(f"{PREFIX}/api/tasks/")).json()
        assert {t["task_id"] for t in listed["results"]} == set(ids)
        for task_id in ids:
            detail = await client.get(f"{PREFIX}/api/tasks/{_path(task_id)}/")
            assert detail.status == 200, await detail.text()
            body = await detail.json()
            assert body["task_id"] == task_id
            assert [line["message"] for line in body["logs"]] == [f"hello {len(task_id)}"]
            raw = await client.get(f"{PREFIX}/api/tasks/{_path(task_id)}/raw")
            assert raw.status == 200 and f"hello {len(task_id)}" in await raw.text()
            page = await client.get(f"{PREFIX}/task/{_path(task_id)}/")
            assert page.status == 200
            async with sse(client, f"{PREFIX}/sse/task/{_path(task_id)}/") as stream:
                events = await stream.rest()
            assert [e.data["message"] for e in events if e.type == "new_log"] == [
                f"hello {len(task_id)}"
            ]
            assert events[-1].type == "end"

        for path in (f"/api/tasks/{_path(OVER)}/", f"/sse/task/{_path(OVER)}/"):
            response = await client.get(PREFIX + path)
            assert response.status == 400, path
            error = (await response.json())["error"]
            assert error.startswith(
                f"task_id: the id is {MAX_TASK_ID_BYTES + 1} bytes long (at most "
                f"{MAX_TASK_ID_BYTES}); expected 1 to {MAX_TASK_ID_BYTES} bytes of UTF-8"
            ), error
