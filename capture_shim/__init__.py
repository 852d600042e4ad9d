"""Capture each Celery task's stdout, stderr and logging into a per-task spool file.

Two ways in::

    capture_shim.install(app)            # every task of the app

    @app.task(base=TerminalLoggingTask)  # one task at a time
    def job(): ...

Inside a task, ``capture_shim.progress(42, "halfway")`` records progress, as does
``self.update_state(meta={"progress": 42})`` or ``meta={"current": 3, "total": 7}``.
This package depends on Celery and the standard library only.
"""

from __future__ import annotations

import os
import traceback
from typing import Any

from celery import Celery, Task
from celery.exceptions import Ignore, Reject, Retry
from celery.signals import task_failure, task_postrun, task_prerun, task_revoked

from capture_shim import fdcapture
from capture_shim.capture import Stats, TaskCapture, current, ensure_routing, host_name, warn_once
from capture_shim.config import ShimConfig

__all__ = ["ShimConfig", "Stats", "TerminalLoggingTask", "install", "progress"]

_installed_apps: set[int] = set()


def install(app: Celery) -> None:
    """Capture the output of every task of `app` (no-op when TASKLOG_ENABLED is false)."""
    config = ShimConfig.from_env()
    if not config.enabled or id(app) in _installed_apps:
        return
    _installed_apps.add(id(app))

    def wanted(task: Any) -> bool:
        return getattr(task, "app", None) is app

    def on_prerun(
        sender: Any = None,
        task_id: str | None = None,
        task: Any = None,
        args: Any = None,
        kwargs: Any = None,
        **_: Any,
    ) -> None:
        if task is None or task_id is None or not wanted(task):
            return
        _guard(_begin, config, task, task_id, args, kwargs)

    def on_failure(
        sender: Any = None,
        task_id: str | None = None,
        exception: Any = None,
        einfo: Any = None,
        **_: Any,
    ) -> None:
        cap = current()
        if cap is not None and cap.task_id == task_id and exception is not None:
            cap.failure = (exception, getattr(einfo, "traceback", None))

    def on_postrun(
        sender: Any = None,
        task_id: str | None = None,
        task: Any = None,
        state: str | None = None,
        **_: Any,
    ) -> None:
        cap = current()
        if cap is None or cap.task_id != task_id:
            return
        exc, tb = cap.failure
        _guard(_end, cap, state or "SUCCESS", exc, tb)

    def on_revoked(request: Any = None, terminated: bool = False, **_: Any) -> None:
        cap = current()
        if cap is not None and request is not None and cap.task_id == getattr(request, "id", None):
            _guard(_end, cap, "REVOKED", None, None)

    # Signals are process-wide; strong references, since these closures live nowhere else.
    task_prerun.connect(on_prerun, weak=False)
    task_failure.connect(on_failure, weak=False)
    task_postrun.connect(on_postrun, weak=False)
    task_revoked.connect(on_revoked, weak=False)

    original = app.Task.update_state

    def update_state(
        self: Task,
        task_id: str | None = None,
        state: str | None = None,
        meta: Any = None,
        **kwargs: Any,
    ) -> None:
        _guard(_record_state, task_id, state, meta)
        original(self, task_id, state, meta, **kwargs)

    app.Task.update_state = update_state


def progress(percent: float | None, message: str | None = None) -> None:
    """Record the current task's progress (0-100); does nothing outside a captured task."""
    cap = current()
    if cap is not None:
        _guard(cap.progress, _clamp(percent), message, None)


class TerminalLoggingTask(Task):  # type: ignore[misc]
    """A task base class that captures its own output, for per-task opt-in."""

    abstract = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        task_id = getattr(self.request, "id", None)
        cap = current()
        if task_id is None or (cap is not None and cap.task_id == task_id):
            return super().__call__(*args, **kwargs)  # called directly, or install() has it
        config = ShimConfig.from_env()
        if not config.enabled:
            return super().__call__(*args, **kwargs)
        cap = _guard(_begin, config, self, task_id, args, kwargs)
        if cap is None:
            return super().__call__(*args, **kwargs)
        try:
            result = super().__call__(*args, **kwargs)
        except Retry:
            _guard(_end, cap, "RETRY", None, None)
            raise
        except (Ignore, Reject):
            _guard(_end, cap, "IGNORED", None, None)
            raise
        except BaseException as exc:
            _guard(_end, cap, "FAILURE", exc, traceback.format_exc())
            raise
        _guard(_end, cap, "SUCCESS", None, None)
        return result

    def update_state(
        self, task_id: str | None = None, state: str | None = None, meta: Any = None, **kwargs: Any
    ) -> None:
        _guard(_record_state, task_id, state, meta)
        super().update_state(task_id, state, meta, **kwargs)


# -- shared by both ways in -----------------------------------------------------------------


def _begin(config: ShimConfig, task: Any, task_id: str, args: Any, kwargs: Any) -> TaskCapture:
    ensure_routing()
    request = task.request
    start: dict[str, Any] = {
        "task_id": task_id,
        "name": task.name,
        "host": host_name(),
        "pid": os.getpid(),
        "worker": getattr(request, "hostname", None),
        "parent_id": getattr(request, "parent_id", None),
        "root_id": getattr(request, "root_id", None),
        "retries": getattr(request, "retries", 0) or 0,
        "max_lines": config.max_lines,
    }
    if config.record_args:
        start["args"] = list(args or ())
        start["kwargs"] = dict(kwargs or {})
    cap = TaskCapture(config, task_id, start)
    cap.activate()
    fdcapture.begin(cap, config)
    return cap


def _end(cap: TaskCapture, state: str, exc: BaseException | None, tb: str | None) -> None:
    try:
        fdcapture.end(cap)  # first: what the pipes still hold comes before the end record
        cap.finish(state, exc, tb)
    finally:
        cap.deactivate()


def _record_state(task_id: str | None, state: str | None, meta: Any) -> None:
    cap = current()
    if cap is None or (task_id is not None and task_id != cap.task_id):
        return
    percent = None
    message = None
    if isinstance(meta, dict):
        if "progress" in meta:
            percent = _clamp(meta["progress"])
        elif "current" in meta and "total" in meta:
            try:
                percent = _clamp(100.0 * float(meta["current"]) / float(meta["total"]))
            except (TypeError, ValueError, ZeroDivisionError):
                percent = None
        raw = meta.get("message", meta.get("status"))
        message = None if raw is None else str(raw)
    cap.progress(percent, message, state)


def _clamp(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if number != number:  # NaN
        return None
    return max(0.0, min(100.0, number))


def _guard(fn: Any, *args: Any) -> Any:
    """Run a shim hook; whatever goes wrong in it, the task goes on."""
    try:
        return fn(*args)
    except Exception as exc:
        Stats.internal_errors += 1
        warn_once(f"internal:{type(exc).__name__}", f"internal error ignored: {exc!r}")
        return None
