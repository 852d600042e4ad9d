"""The demo tasks a browser may launch: their Celery names, the keyword arguments it may set and
their bounds.

One owner for a fact two layers need: `tasklog.demo.tasks` registers the tasks under these
names, the API's launcher (`api.launch`, on under `tasklog demo`) sends them and its OpenAPI
document lists them. `tests/unit/test_demo_catalogue.py` fails when the two drift apart.
"""

from __future__ import annotations

#: The demo tasks a browser may launch, with the keyword arguments it may set.
DEMO_TASKS: dict[str, dict[str, type]] = {
    "demo.demo_long_task": {"duration": float, "steps": int},
    "demo.demo_failing_task": {},
    "demo.demo_quick_task": {},
    "celery_tasklog.tasks.timed_print_task": {"duration": float},
    "demo.print_text": {"text": str, "stream": str},
    "demo.demo_workflow": {"width": int, "lines": int, "delay": float},
}

#: The bounds of their numeric arguments.
LIMITS: dict[str, tuple[float, float]] = {
    "duration": (0.1, 3600),
    "steps": (1, 1000),
    "width": (1, 20),
    "lines": (1, 1000),
    "delay": (0, 10),
}
