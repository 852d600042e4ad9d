"""`tasklog logs --root ROOT_ID`: the merged lines of a workflow's tasks, in time order.

Each line carries its task id (and, as JSON, ``task_id``), read with the queries of the API's
workflow stream (`api.lookups`): every task is followed from its own last seq, so nothing is
printed twice or skipped, whichever host stored what first. With ``--follow`` it ends once
every task of the workflow has finished and no new one joined for `SETTLE` seconds (a chord's
body starts only after its header tasks end).
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from typing import Any

from psycopg import sql
from psycopg.rows import dict_row

from api.lookups import WORKFLOW_TASKS_MAX, Q
from tasklog.core import db
from tasklog.core.constants import FINISHED_STATES
from tasklog.core.errors import TasklogError
from tasklog.core.terminal import for_terminal, json_for_terminal

PAGE = 1000
SETTLE = 3.0
_COLUMNS = ("task_id", "task_name", "state", "parent_id", "root_id", "created_at")
TASKS = sql.SQL(Q["workflow_tasks"]).format(
    columns=sql.SQL(", ").join(map(sql.Identifier, _COLUMNS))
)


class UnknownWorkflow(TasklogError):
    """No task of this workflow is stored."""


def print_workflow(url: str, root_id: str, *, as_json: bool, follow: bool, raw: bool) -> int:
    after: dict[str, int] = {}
    names: dict[str, str] = {}
    settled_since: float | None = None
    with db.connect(url, row_factory=dict_row) as conn, db.translated(url):
        while True:
            tasks = conn.execute(
                TASKS, {"root_id": root_id, "limit": WORKFLOW_TASKS_MAX}
            ).fetchall()
            if not tasks and not follow:
                raise UnknownWorkflow(f"no task of workflow {root_id!r} is stored (yet)")
            joined = any(t["task_id"] not in names for t in tasks)
            for t in tasks:
                names[t["task_id"]] = t["task_name"] or "?"
                after.setdefault(t["task_id"], 0)
            printed = True
            while printed and after:
                ids = list(after)
                rows = conn.execute(
                    Q["workflow_lines"],
                    {"task_ids": ids, "after": [after[i] for i in ids], "limit": PAGE},
                ).fetchall()
                for row in rows:
                    if row["seq"] > after[row["task_id"]]:
                        after[row["task_id"]] = row["seq"]
                        _print(row, names[row["task_id"]], as_json, raw)
                printed = len(rows) == PAGE
            if not follow:
                return 0
            done = bool(tasks) and all(t["state"] in FINISHED_STATES for t in tasks)
            now = time.monotonic()
            if not done or joined:
                settled_since = None
            elif settled_since is None:
                settled_since = now
            elif now - settled_since >= SETTLE:
                return 0
            sys.stdout.flush()
            time.sleep(0.25)


def _print(line: dict[str, Any], name: str, as_json: bool, raw: bool) -> None:
    if as_json:
        out = {**line, "ts": line["ts"].isoformat()}
        print(json_for_terminal(json.dumps(out, ensure_ascii=False)))
        return
    stamp: datetime = line["ts"]
    tag = line["stream"] if line["level"] is None else f"{line['stream']}:{line['level']}"
    text = (
        f"{stamp:%H:%M:%S.%f}"[:-3]
        + f" {line['task_id'][:8]} {name[:24]:24} {tag:>12} | {line['message']}"
    )
    print(text if raw else for_terminal(text))
