"""Launching the demo tasks from the browser, as the seed's demo views did.

Which tasks and arguments are launchable is `tasklog.core.demo_tasks`'s (the demo registers
its tasks under those names; a unit test holds the two together). Tasks are sent by name
through a Celery app of our own (broker: TASKLOG_REDIS_URL, as in `demo.app`), so the API never
imports the demo code or installs the capture shim.
"""

from __future__ import annotations

import asyncio

from celery import Celery

from tasklog.core.constants import STDERR, STDOUT
from tasklog.core.demo_tasks import DEMO_TASKS, LIMITS


def check_kwargs(name: str, kwargs: object) -> str | None:
    """Why these arguments may not be sent to demo task `name`, or None if they may."""
    allowed = DEMO_TASKS[name]
    usage = f"kwargs: {name} accepts {', '.join(allowed) or 'no arguments'}"
    if not isinstance(kwargs, dict):
        return usage
    for key, value in kwargs.items():
        kind = allowed.get(key)
        if kind is None or isinstance(value, bool):
            return usage
        if not isinstance(value, (int, float) if kind is float else kind):
            return f"kwargs.{key}: expected {kind.__name__}"
        if (
            key in LIMITS
            and isinstance(value, int | float)
            and not (LIMITS[key][0] <= value <= LIMITS[key][1])
        ):
            return f"kwargs.{key}: expected {LIMITS[key][0]:g} to {LIMITS[key][1]:g}"
        if key == "text" and isinstance(value, str) and len(value) > 10_000:
            return "kwargs.text: at most 10000 characters"
        if key == "stream" and value not in (STDOUT, STDERR):
            return f"kwargs.stream: expected {STDOUT} or {STDERR}"
    return None


class Launcher:
    """Sends demo tasks to the broker; Celery's client is blocking, so it runs in a thread."""

    def __init__(self, broker_url: str | None) -> None:
        self._celery: Celery | None = None
        if broker_url:
            self._celery = Celery("tasklog-api", broker=broker_url, set_as_current=False)
            # A browser waits for the answer: fail fast when the broker is away.
            self._celery.conf.update(
                broker_connection_timeout=3,
                broker_connection_retry_on_startup=False,
                task_publish_retry=False,
            )

    @property
    def available(self) -> bool:
        return self._celery is not None

    async def launch(self, name: str, kwargs: dict[str, object]) -> str:
        assert self._celery is not None
        celery = self._celery
        result = await asyncio.to_thread(celery.send_task, name, kwargs=kwargs)
        return str(result.id)

    async def close(self) -> None:
        if self._celery is not None:
            await asyncio.to_thread(self._celery.close)
