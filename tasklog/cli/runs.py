"""A task's runs and its exception on the terminal (`tasklog logs`).

A retried task keeps one row and one seq numbering across its runs; `task_runs` (migrations
0005, 0007: a run per delivery) says where each run starts. When a task ran more than once,
each run's lines follow a header naming the run, its host, its state and its runtime; as JSON,
each line carries its ``run``. A task that failed ends with its exception and traceback,
marked as such.
"""

from __future__ import annotations

import json
from typing import Any

from api.lookups import Q, runs_json
from tasklog.core.terminal import for_terminal, json_for_terminal

__all__ = ["Q", "Sections", "print_exception"]

Row = dict[str, Any]


class Sections:
    """Puts each run's header before its first line (only for a task that ran more than once)."""

    def __init__(self, as_json: bool, raw: bool) -> None:
        self.as_json, self.raw = as_json, raw
        self.runs: list[dict[str, Any]] = []
        self.shown = -1

    def update(self, rows: list[Row]) -> None:
        self.runs = runs_json(rows)

    def before(self, line: Row) -> Row:
        """`line`, after printing the header of a run it opens; as JSON, with its ``run``."""
        index = -1
        for i, run in enumerate(self.runs):
            if line["seq"] >= run["first_seq"]:
                index = i
        if index < 0:
            return line
        run = self.runs[index]
        if self.as_json:
            return {**line, "run": run["run"]}
        if len(self.runs) > 1 and index > self.shown:
            self.shown = index
            print(_tty(header(run, index + 1, len(self.runs)), self.raw))
        return line


def header(run: dict[str, Any], number: int, total: int) -> str:
    parts = [f"run {number} of {total}", run["host"] or "?", run["state"]]
    if run["runtime"] is not None:
        parts.append(f"{run['runtime']:.2f}s")
    if run["started_at"]:
        parts.append("started " + str(run["started_at"])[:19].replace("T", " "))
    return "── " + " · ".join(parts) + " ──"


def print_exception(task: Row, as_json: bool, raw: bool) -> None:
    """The exception and traceback of a task that raised one, after its lines."""
    if not task["exc_type"] and not task["traceback"]:
        return
    if as_json:
        obj = {
            "type": "exception",
            "state": task["state"],
            "exc_type": task["exc_type"],
            "exc_message": task["exc_message"],
            "traceback": task["traceback"],
        }
        print(json_for_terminal(json.dumps(obj, ensure_ascii=False)))
        return
    print(_tty(f"── {task['state']}: {task['exc_type']}: {task['exc_message'] or ''} ──", raw))
    for text in (task["traceback"] or "").rstrip("\n").splitlines():
        print(_tty(text, raw))


def _tty(text: str, raw: bool) -> str:
    return text if raw else for_terminal(text)
