"""The launchable demo tasks (`tasklog.core.demo_tasks`) are the demo's own: each name is a task
`tasklog.demo.tasks` registers, taking the arguments the launcher may set."""

from __future__ import annotations

import ast
from pathlib import Path

from tasklog.core.demo_tasks import DEMO_TASKS, LIMITS

TASKS_PY = Path(__file__).resolve().parents[2] / "tasklog" / "demo" / "tasks.py"


def _registered() -> dict[str, list[str]]:
    """Task name -> parameter names, read from the decorators of `tasklog/demo/tasks.py` (the
    module is not imported: importing the demo app installs the capture shim)."""
    found: dict[str, list[str]] = {}
    for node in ast.parse(TASKS_PY.read_text()).body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            if isinstance(decorator, ast.Call):
                for keyword in decorator.keywords:
                    value = keyword.value
                    if keyword.arg == "name" and isinstance(value, ast.Constant):
                        found[str(value.value)] = [a.arg for a in node.args.args]
    return found


def test_every_launchable_task_is_registered_with_the_arguments_offered() -> None:
    registered = _registered()
    for name, arguments in DEMO_TASKS.items():
        assert name in registered, f"{name} is not a task of tasklog.demo.tasks"
        assert set(arguments) <= set(registered[name]), name


def test_every_bounded_argument_is_offered_by_some_task() -> None:
    offered = {argument for arguments in DEMO_TASKS.values() for argument in arguments}
    assert set(LIMITS) <= offered
