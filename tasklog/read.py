"""The command line's read path: recent tasks and a task's lines, straight from Postgres."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tasklog import runs
from tasklog.core import queries
from tasklog.core.constants import FINISHED_STATES
from tasklog.core.errors import StoreUnavailable, TasklogError
from tasklog.terminal import for_terminal, json_for_terminal

Q = queries.load("tasklog", "read.sql")


class UnknownTask(TasklogError):
    """No such task."""


def _connect(url: str) -> psycopg.Connection[dict[str, Any]]:
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=5, row_factory=dict_row)
    except psycopg.OperationalError as exc:
        last = str(exc).strip().splitlines()[-1:] or ["connection failed"]
        raise StoreUnavailable(f"TASKLOG_DATABASE_URL: cannot connect ({last[0]})") from None


def recent_tasks(url: str, limit: int, state: str | None = None) -> list[dict[str, Any]]:
    with _connect(url) as conn:
        return conn.execute(
            Q["recent_tasks"], {"limit": limit, "state": state.upper() if state else None}
        ).fetchall()


def format_tasks(rows: list[dict[str, Any]]) -> str:
    header = (
        f"{'TASK ID':36}  {'NAME':28}  {'STATE':8}  {'PROG':>4}  {'STARTED':19}  {'RUNTIME':>8}"
    )
    out = [header]
    for row in rows:
        progress = "" if row["progress"] is None else f"{row['progress']:.0f}%"
        started = row["started_at"].strftime("%Y-%m-%d %H:%M:%S") if row["started_at"] else ""
        runtime = "" if row["runtime"] is None else f"{row['runtime']:.2f}s"
        out.append(
            f"{row['task_id'][:36]:36}  {(row['task_name'] or '')[:28]:28}  {row['status']:8}  "
            f"{progress:>4}  {started:19}  {runtime:>8}"
        )
    return "\n".join(out)


def print_logs(url: str, task_id: str, *, as_json: bool, follow: bool, raw: bool = False) -> int:
    """Print a task's lines in order; with `follow`, until the task ends. Returns an exit code.

    A retried task's runs each start with a header (a ``run`` key on each JSON line); a failed
    task ends with its exception and traceback (one last ``{"type": "exception"}`` object).
    """
    after = 0
    sections = runs.Sections(as_json, raw)
    with _connect(url) as conn:
        while True:
            task = conn.execute(Q["task_state"], {"task_id": task_id}).fetchone()
            if task is None and not follow:
                raise UnknownTask(f"no task {task_id!r} is stored (yet)")
            sections.update(conn.execute(runs.Q["runs"], {"task_id": task_id}).fetchall())
            for line in conn.execute(Q["task_lines"], {"task_id": task_id, "after": after}):
                after = line["seq"]
                _print_line(sections.before(line), as_json, raw)
            if not follow or (task is not None and task["state"] in FINISHED_STATES):
                # A finished state is committed with its last lines: nothing more will come.
                if task is not None and task["state"] in FINISHED_STATES and follow:
                    for line in conn.execute(Q["task_lines"], {"task_id": task_id, "after": after}):
                        after = line["seq"]
                        _print_line(sections.before(line), as_json, raw)
                if task is not None:
                    runs.print_exception(task, as_json, raw)
                return 0
            sys.stdout.flush()
            time.sleep(0.25)


def _print_line(line: dict[str, Any], as_json: bool, raw: bool) -> None:
    if as_json:
        line = {**line, "ts": line["ts"].isoformat()}
        print(json_for_terminal(json.dumps(line, ensure_ascii=False)))
        return
    stamp: datetime = line["ts"]
    tag = line["stream"] if line["level"] is None else f"{line['stream']}:{line['level']}"
    text = f"{stamp:%H:%M:%S.%f}"[:-3] + f" {tag:>12} | {line['message']}"
    # The message and the level name are the task's: only their colours reach the terminal.
    print(text if raw else for_terminal(text))
