"""`tasklog logs` on a terminal: a task's hostile output, printed by a real worker and stored
by the collector, comes out with its colours and without any other sequence, unless --raw;
--json gives back exactly what was stored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.helpers import REPO_ROOT, ProcessFactory, pg_rows, wait_for

HOSTILE = (
    "\x1b[31mred\x1b[0m"
    " clip\x1b]52;c;Y3VybCBldmlsLnNoIHwgc2g=\x07"
    " title\x1b]0;owned\x1b\\"
    " dcs\x1bP$qm\x1b\\"
    " up\x1b[1A\x1b[2K"
    " c1\x9b2J\x9d0;t\x9c"
    " back\x08\x08"
    " cr\rFAKE"
)
SHOWN = "\x1b[31mred\x1b[0m clip title dcs up c1 back crFAKE"


def _logs(database_url: str, *args: str) -> bytes:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKLOG_")}
    env["TASKLOG_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "tasklog", "logs", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout


def test_logs_keeps_colours_and_strips_every_other_sequence(
    procs: ProcessFactory, database_url: str, redis_url: str, spool_dir: Path, celery_client: Any
) -> None:
    procs.collector(
        database_url=database_url, spool_dir=spool_dir, redis_url=redis_url, ready="following"
    )
    procs.worker(redis_url=redis_url, spool_dir=spool_dir, pool="solo", concurrency=1)
    result = celery_client.send_task("demo.print_text", args=(HOSTILE + "\n",))
    assert result.get(timeout=30) == "ok"
    stored = wait_for(
        lambda: pg_rows(
            database_url,
            "SELECT message FROM lines l JOIN tasks t USING (task_id)"
            " WHERE task_id = %s AND t.state = 'SUCCESS'",
            (result.id,),
        ),
        message="the task's line stored",
    )
    assert stored == [(HOSTILE,)], "the store keeps the output as printed"

    shown = _logs(database_url, result.id).decode()
    (line,) = shown.splitlines()
    assert line.endswith(" stdout | " + SHOWN)
    assert "\x1b" not in line.replace("\x1b[31m", "").replace("\x1b[0m", "")

    raw = _logs(database_url, result.id, "--raw").decode()
    assert raw.rstrip("\n").endswith(" stdout | " + HOSTILE)

    exact = _logs(database_url, result.id, "--json")
    (record,) = [json.loads(x) for x in exact.decode().split("\n") if x]
    assert record["message"] == HOSTILE
    # Exact, and still nothing a terminal acts on: C1 controls travel as \u escapes.
    assert b"\x1b" not in exact and "\x9b".encode() not in exact
