"""The command line's read path: recent tasks and a task's lines.

It runs the API's own named queries (`api.queries.statement`, ``api/sql/queries.sql``) on a
connection of its own, so `tasklog tasks` and ``GET /tasklog/api/tasks/`` cannot disagree, and
shows tasks in the API's JSON shape (`api.wire.task_json`). Driver errors arrive as the
project's one-line errors (`tasklog.core.db`).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator

import psycopg
from psycopg.rows import dict_row

from api.queries import Row, TaskFilter, statement
from api.wire import Json, task_json
from tasklog.cli import runs
from tasklog.core import db
from tasklog.core.constants import FINISHED_STATES, task_id_problem
from tasklog.core.errors import ConfigError, TasklogError
from tasklog.core.terminal import escaped, for_terminal, json_for_terminal

#: Lines read per query while printing a log.
PAGE = 10_000
#: How often `logs --follow` looks for new lines, in seconds.
FOLLOW_INTERVAL = 0.25

Conn = psycopg.Connection[Row]


class UnknownTask(TasklogError):
    """No such task."""


def check_task_id(task_id: str) -> str:
    """The task id as given, or one line saying why no task can have it."""
    problem = task_id_problem(task_id)
    if problem is not None:
        raise ConfigError(f"TASK_ID: the id {problem}")
    return task_id


def recent_tasks(url: str, limit: int, states: list[str]) -> list[Json]:
    """The newest `limit` tasks (in `states`, if any), as the API shows them."""
    where, params = TaskFilter(states=states).where()
    with db.connect(url, row_factory=dict_row) as conn, db.translated(url):
        rows = conn.execute(statement("list_tasks", where=where), {**params, "limit": limit})
        return [task_json(row) for row in rows.fetchall()]


def format_tasks(tasks: list[Json]) -> str:
    header = (
        f"{'TASK ID':36}  {'NAME':28}  {'STATE':8}  {'PROG':>4}  {'STARTED':19}  {'RUNTIME':>8}"
    )
    out = [header]
    for task in tasks:
        progress = "" if task["progress"] is None else f"{task['progress']:.0f}%"
        started = str(task["started_at"] or "")[:19].replace("T", " ")
        runtime = "" if task["runtime"] is None else f"{task['runtime']:.2f}s"
        # Ids, names and states are chosen by tasks: a terminal must not obey what they hold.
        task_id = escaped(task["task_id"])[:36]
        name = escaped(task["task_name"] or "")[:28]
        out.append(
            f"{task_id:36}  {name:28}  {escaped(task['status']):8}  {progress:>4}  "
            f"{started:19}  {runtime:>8}"
        )
    return "\n".join(out)


def print_logs(url: str, task_id: str, *, as_json: bool, follow: bool, raw: bool = False) -> int:
    """Print a task's lines in order; with `follow`, until the task ends. Returns an exit code.

    A retried task's runs each start with a header (a ``run`` key on each JSON line); a failed
    task ends with its exception and traceback (one last ``{"type": "exception"}`` object).
    """
    after = 0
    sections = runs.Sections(as_json, raw)
    with db.connect(url, row_factory=dict_row) as conn, db.translated(url):
        while True:
            task = conn.execute(statement("get_task"), {"task_id": task_id}).fetchone()
            if task is None and not follow:
                raise UnknownTask(f"no task {task_id!r} is stored (yet)")
            # A finished state is committed with its last lines: after this read, none will come.
            finished = task is not None and task["state"] in FINISHED_STATES
            sections.update(conn.execute(runs.Q["runs"], {"task_id": task_id}).fetchall())
            for line in _lines_after(conn, task_id, after):
                after = line["seq"]
                _print_line(sections.before(line), as_json, raw)
            if finished or not follow:
                if task is not None:
                    runs.print_exception(task, as_json, raw)
                return 0
            sys.stdout.flush()
            time.sleep(FOLLOW_INTERVAL)


def _lines_after(conn: Conn, task_id: str, after: int) -> Iterator[Row]:
    """Every stored line after seq `after`, a page at a time."""
    while True:
        params = {"task_id": task_id, "after_seq": after, "limit": PAGE}
        rows = conn.execute(statement("lines_after"), params).fetchall()
        yield from rows
        if len(rows) < PAGE:
            return
        after = rows[-1]["seq"]


def _print_line(line: Row, as_json: bool, raw: bool) -> None:
    if as_json:
        line = {**line, "ts": line["ts"].isoformat()}
        print(json_for_terminal(json.dumps(line, ensure_ascii=False)))
        return
    stamp = line["ts"]
    tag = line["stream"] if line["level"] is None else f"{line['stream']}:{line['level']}"
    text = f"{stamp:%H:%M:%S.%f}"[:-3] + f" {tag:>12} | {line['message']}"
    # The message and the level name are the task's: only their colours reach the terminal.
    print(text if raw else for_terminal(text))
