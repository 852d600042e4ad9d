"""Where the shim meets Celery: the signal handlers, the task base class, the state hooks.

Nothing here runs at import. `install(app)` connects the task signals for one app;
`TerminalLoggingTask` connects what it needs when a task class is made from it. Both connect
the process-wide hooks once per process (`connect_process_hooks`): `worker_init` and
`worker_process_init` (which pool runs the tasks: fd capture only where one task owns the
process), the at-fork hook of fd capture, and `task_received`, `task_failure` and
`task_revoked`, which the worker's main process sends about runs its pool children could not
end themselves (`capture_shim.verdict`). Connecting twice connects nothing more.

The state of a run's end is Celery's: `task_postrun`'s state, except that ``Reject(requeue=False)``
is a FAILURE (as Celery records it) and a run that left by `SystemExit` (billiard's SIGTERM
handler) has no end of its own.
"""

from __future__ import annotations

import os
import threading
import traceback
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from celery import Celery, Task
from celery.exceptions import Ignore, Reject, Retry
from celery.signals import (
    task_failure,
    task_postrun,
    task_prerun,
    task_received,
    task_revoked,
    worker_init,
    worker_process_init,
)

from capture_shim import fdcapture, spool, verdict
from capture_shim.capture import Stats, TaskCapture, current, ensure_routing, host_name, warn_once
from capture_shim.config import ShimConfig
from tasklog.core import constants as states

__all__ = ["TerminalLoggingTask", "check_installed", "connect_process_hooks", "install", "progress"]

_P = ParamSpec("_P")
_R = TypeVar("_R")

_lock = threading.Lock()
_process_hooks = False
_task_signals = False
#: The apps `install` was called for, with the config read then (by id: apps need not hash).
_installed: dict[int, tuple[Celery, ShimConfig]] = {}
#: This process is a prefork pool child: its main process may speak for its runs.
_pool_child = False


# -- connecting -------------------------------------------------------------------------------


def connect_process_hooks() -> None:
    """Learn the worker's pool and follow forks; once per process, whoever asks first."""
    global _process_hooks
    with _lock:
        if _process_hooks:
            return
        _process_hooks = True
        # Signals are process-wide and these handlers live for the process: strong references.
        worker_init.connect(_on_worker_init, weak=False)
        worker_process_init.connect(_on_worker_process_init, weak=False)
        # What the main process learns of runs in its pool children (`capture_shim.verdict`),
        # and what a task's own process learns of its failure.
        task_received.connect(_on_received, weak=False)
        task_failure.connect(_on_failure, weak=False)
        task_revoked.connect(_on_revoked, weak=False)
        fdcapture.follow_forks()


def install(app: Celery) -> None:
    """Capture the output of every task of `app` (no-op when TASKLOG_ENABLED is false)."""
    config = ShimConfig.from_env()
    if not config.enabled:
        return
    connect_process_hooks()
    global _task_signals
    with _lock:
        if id(app) in _installed:
            return
        _installed[id(app)] = (app, config)
        if not _task_signals:
            _task_signals = True
            task_prerun.connect(_on_prerun, weak=False)
            task_postrun.connect(_on_postrun, weak=False)
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


# -- the worker -------------------------------------------------------------------------------


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    fdcapture.set_pool(getattr(sender, "pool_cls", None))
    check_installed(getattr(sender, "app", None))


def check_installed(app: Any) -> None:
    """At a worker's start: warn once when nothing of its app is captured.

    The app the worker runs was never given to `install` and has no `TerminalLoggingTask`
    (under ``celery.contrib.pytest``, `install` called on ``celery_app`` where the worker runs
    ``celery_session_app``; or a project that imports `capture_shim` and forgot the call).
    """
    if app is None or id(app) in _installed or "not-installed" in Stats._warned:
        return
    if not ShimConfig.from_env().enabled:
        return
    tasks = getattr(app, "tasks", {})
    if any(isinstance(task, TerminalLoggingTask) for task in list(tasks.values())):
        return
    others = ", ".join(repr(getattr(a, "main", None) or "?") for a, _ in _installed.values())
    warn_once(
        "not-installed",
        f"this worker's app {getattr(app, 'main', None) or '?'!r} was never given to "
        "capture_shim.install() and has no TerminalLoggingTask task: its tasks' output is not "
        "captured" + (f" (installed: {others})" if others else ""),
    )


def _on_worker_process_init(**_: Any) -> None:
    global _pool_child
    _pool_child = True
    fdcapture.set_pool_child()


# -- install(app): the task signals -----------------------------------------------------------


def _config_for(task: Any) -> ShimConfig | None:
    entry = _installed.get(id(getattr(task, "app", None)))
    return None if entry is None or entry[0] is not task.app else entry[1]


def _captured_config(task: Any) -> ShimConfig | None:
    """The config under which `task`'s runs are captured: its app's, or its own class's."""
    config = _config_for(task)
    if config is None and isinstance(task, TerminalLoggingTask):
        config = ShimConfig.from_env()
        return config if config.enabled else None
    return config


def _on_received(request: Any = None, **_: Any) -> None:
    verdict.received(request)


def _on_prerun(
    sender: Any = None,
    task_id: str | None = None,
    task: Any = None,
    args: Any = None,
    kwargs: Any = None,
    **_: Any,
) -> None:
    if task is None or task_id is None:
        return
    config = _config_for(task)
    if config is not None:
        _guard(_begin, config, task, task_id, args, kwargs)
    elif not isinstance(task, TerminalLoggingTask):
        # install() was called for another app than this task's (celery.contrib.pytest's
        # celery_app where the session worker runs celery_session_app)
        _guard(check_installed, getattr(task, "app", None))


def _on_failure(
    sender: Any = None,
    task_id: str | None = None,
    exception: Any = None,
    einfo: Any = None,
    **_: Any,
) -> None:
    if exception is None or task_id is None:
        return
    cap = current()
    if cap is not None and cap.task_id == task_id:
        cap.failure = (exception, getattr(einfo, "traceback", None))
        return
    # Sent by the worker's main process about a run in a pool child (hard time limit, lost
    # worker): the child could not write this end itself.
    config = _captured_config(sender)
    if config is not None:
        _guard(verdict.failed, config, task_id, exception, getattr(einfo, "traceback", None))


def _on_postrun(
    sender: Any = None,
    task_id: str | None = None,
    task: Any = None,
    state: str | None = None,
    retval: Any = None,
    **_: Any,
) -> None:
    cap = current()
    if cap is None or cap.task_id != task_id:
        return
    if state is None:
        # The task did not return or raise an Exception: SystemExit from billiard's SIGTERM
        # handler (hard time limit, revoke with terminate) or the task's own sys.exit. Only the
        # worker's main process knows which: it writes the end (`capture_shim.verdict`); a
        # run nobody speaks for is LOST once this process is gone.
        _guard(_abandon, cap)
        return
    exc, tb = cap.failure
    if state == states.REJECTED and not getattr(retval, "requeue", True):
        # Reject(requeue=False): Celery records a FAILURE with the Reject (issue 4222).
        state, exc, tb = states.FAILURE, retval, None
    _guard(_end, cap, state, exc, tb)


def _on_revoked(
    sender: Any = None,
    request: Any = None,
    terminated: bool = False,
    signum: Any = None,
    expired: bool = False,
    **_: Any,
) -> None:
    task_id = getattr(request, "id", None)
    if not isinstance(task_id, str):
        return
    cap = current()
    if cap is not None and cap.task_id == task_id:
        _guard(_end, cap, states.REVOKED, None, None)
        return
    config = _captured_config(sender)
    if config is not None:
        _guard(
            verdict.revoked,
            config,
            task_id,
            getattr(sender, "name", None),
            request,
            terminated=bool(terminated),
            expired=bool(expired),
            signum=signum,
        )


# -- TerminalLoggingTask: one task at a time --------------------------------------------------


class TerminalLoggingTask(Task):  # type: ignore[misc]
    """A task base class that captures its own output, for per-task opt-in."""

    abstract = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A task class is made from this one when the app is finalized, which a worker does
        # before it sends `worker_init`: early enough to learn the pool.
        super().__init_subclass__(**kwargs)
        connect_process_hooks()

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
            _guard(_end, cap, states.RETRY, None, None)
            raise
        except Ignore:
            _guard(_end, cap, states.IGNORED, None, None)
            raise
        except Reject as exc:
            if exc.requeue:
                _guard(_end, cap, states.REJECTED, None, None)
            else:  # Celery records a FAILURE with the Reject
                _guard(_end, cap, states.FAILURE, exc, None)
            raise
        except Exception as exc:
            _guard(_end, cap, states.FAILURE, exc, traceback.format_exc())
            raise
        except BaseException:  # SystemExit: see _on_postrun
            _guard(_abandon, cap)
            raise
        _guard(_end, cap, states.SUCCESS, None, None)
        return result

    def update_state(
        self, task_id: str | None = None, state: str | None = None, meta: Any = None, **kwargs: Any
    ) -> None:
        _guard(_record_state, task_id, state, meta)
        super().update_state(task_id, state, meta, **kwargs)


# -- shared by both ways in -------------------------------------------------------------------


def _begin(config: ShimConfig, task: Any, task_id: str, args: Any, kwargs: Any) -> TaskCapture:
    ensure_routing()
    request = task.request
    start: dict[str, Any] = {
        "task_id": task_id,
        "name": task.name,
        "host": host_name(),
        "pid": os.getpid(),
        "worker": getattr(request, "hostname", None),
        "parent_id": _task_id_or_none(getattr(request, "parent_id", None)),
        "root_id": _task_id_or_none(getattr(request, "root_id", None)),
        "retries": getattr(request, "retries", 0) or 0,
        "max_lines": config.max_lines,
    }
    if _pool_child:  # the collector waits a while for the main process's verdict
        start["ppid"] = os.getppid()
    if config.record_args:
        start["args"] = list(args or ())
        start["kwargs"] = dict(kwargs or {})
    cap = TaskCapture(config, task_id, start)
    cap.activate()
    fdcapture.begin(cap, config)
    return cap


def _task_id_or_none(value: object) -> str | None:
    # Message headers a client chose: they carry a task id within the format's bounds, or none.
    return value if isinstance(value, str) and spool.task_id_problem(value) is None else None


def _end(cap: TaskCapture, state: str, exc: BaseException | None, tb: str | None) -> None:
    try:
        fdcapture.end(cap)  # first: what the pipes still hold comes before the end record
        cap.finish(state, exc, tb)
    finally:
        cap.deactivate()


def _abandon(cap: TaskCapture) -> None:
    """Stop capturing `cap` without an end record: its outcome is not this process's to say."""
    try:
        fdcapture.end(cap)
        cap.abandon()
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


def _guard(fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R | None:
    """Run a shim hook; whatever goes wrong in it, the task goes on."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        Stats.internal_errors += 1
        warn_once(f"internal:{type(exc).__name__}", f"internal error ignored: {exc!r}")
        return None
