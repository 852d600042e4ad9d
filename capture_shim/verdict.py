"""The worker's main process speaks for a task run its pool child could not finish.

A prefork child killed by a signal never reaches its own `end` record, or reaches it not knowing
why it stops: billiard's SIGTERM handler raises `SystemExit` inside the task and Celery sends
`task_postrun` with ``state=None`` (a hard time limit, ``revoke(terminate=True)``), and after a
SIGKILL (``signal='KILL'``, a lost worker) nothing runs at all. The child then writes no end
(`hooks._on_postrun`). The main process knows what Celery decided, from the signals it sends
there: `task_revoked` (terminated, revoked or expired before it started) and `task_failure`
(`TimeLimitExceeded`, `WorkerLostError`). Each is a *verdict*:

- The run started in a child (the `Request` seen at `task_received` has its `worker_pid`): once
  that child is gone (it may still print on its way out of a SIGTERM), the verdict's `end`
  record is appended to the child's spool file if the file has no end of its own. The file is
  the child's run; the end is one ``O_APPEND`` write like any other record.
- The run never started (revoked or expired in the queue): a spool file of its own, a `start`
  and a REVOKED `end`, so the task appears with Celery's state.

Waiting for the child is done in a thread of its own (the main process's loop never waits),
bounded by `CHILD_EXIT_WAIT`; a child still alive then (one that ignored SIGTERM) gets the
verdict anyway: Celery has already said the run is over. Nothing here raises into the worker.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
import weakref
from typing import Any

from capture_shim import spool
from capture_shim.config import ShimConfig
from tasklog.core.constants import FAILURE, REVOKED
from tasklog.core.process import pid_alive

__all__ = ["CHILD_EXIT_WAIT", "failed", "received", "revoked"]

#: Seconds a verdict waits for the pool child to exit before it is written regardless.
CHILD_EXIT_WAIT = 10.0
#: What is read of a spool file's end to see whether its last record is an `end`.
_TAIL_BYTES = 64 << 10

#: The requests this process received, by task id: the pool child's pid and start time.
_requests: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()


def received(request: Any) -> None:
    """`task_received` in the worker's main process: remember the request."""
    task_id = getattr(request, "id", None)
    if isinstance(task_id, str):
        _requests[task_id] = request


def revoked(
    config: ShimConfig,
    task_id: str,
    name: str | None,
    context: Any,
    *,
    terminated: bool,
    expired: bool,
    signum: Any,
) -> None:
    """`task_revoked` for a task this process does not run itself."""
    if terminated:
        reason = f"terminated by signal {signum}" if signum else "terminated"
    else:
        reason = "expired" if expired else "revoked"
    end = _end(REVOKED, "TaskRevokedError", reason, None)
    child = _child_of(task_id)
    if child is not None:
        _in_background(config, task_id, child, end, name, context)
    else:  # revoked or expired before a pool child took it: a row of its own all the same
        _start_and_end(config, task_id, name, context, end)


def failed(
    config: ShimConfig, task_id: str, exception: BaseException, traceback: str | None
) -> None:
    """`task_failure` sent by the main process about a run in a pool child (a hard time limit,
    a lost worker): the child's file gets the failure if it has no end of its own."""
    child = _child_of(task_id)
    if child is None:
        return
    end = _end(FAILURE, type(exception).__name__, _safe_str(exception), traceback)
    _in_background(config, task_id, child, end, None, None)


# -- where the run is -------------------------------------------------------------------------


def _child_of(task_id: str) -> tuple[int, float] | None:
    """(pid, start time) of the process that took the task, when it is not this one."""
    request = _requests.get(task_id)
    pid = getattr(request, "worker_pid", None)
    if not isinstance(pid, int) or pid == os.getpid():
        return None
    started = getattr(request, "time_start", None)
    return pid, float(started) if isinstance(started, int | float) else 0.0


def _files_of(config: ShimConfig, task_id: str, pid: int, since: float) -> list[str]:
    """The spool files the child `pid` opened for `task_id` (from about `since` on)."""
    stem = spool.safe_name(task_id)
    found = []
    try:
        names = os.listdir(config.spool_dir)
    except OSError:
        return []
    # A request's start time is the parent's clock at acceptance; the child's file is named
    # from its own clock a little later. A second of slack keeps an earlier run's file apart
    # (a retry on the same child) without missing this one.
    floor = int((since - 1.0) * 1e9) if since else 0
    for name in names:
        parsed = spool.parse_file_name(name)
        if parsed is not None and parsed.stem == stem and parsed.pid == pid and parsed.ns >= floor:
            found.append(os.path.join(config.spool_dir, name))
    return found


# -- writing ------------------------------------------------------------------------------------


def _end(state: str, exc_type: str, message: str, traceback: str | None) -> dict[str, Any]:
    end: dict[str, Any] = {"k": spool.END, "state": state, "lines": 0, "errors": 0}
    end["exc_type"] = exc_type
    end["exc_message"] = message
    if traceback is not None:
        end["traceback"] = traceback
    return end


def _in_background(
    config: ShimConfig,
    task_id: str,
    child: tuple[int, float],
    end: dict[str, Any],
    name: str | None,
    context: Any,
) -> None:
    thread = threading.Thread(
        target=_guarded,
        args=(_settle, config, task_id, child, end, name, context),
        name="tasklog-verdict",
        daemon=True,
    )
    thread.start()


def _settle(
    config: ShimConfig,
    task_id: str,
    child: tuple[int, float],
    end: dict[str, Any],
    name: str | None,
    context: Any,
) -> None:
    """Wait until the child's files have their end or the child is gone, then give the end
    to those without one."""
    pid, since = child
    deadline = time.monotonic() + CHILD_EXIT_WAIT
    with _ExitWatch(pid) as watch:
        while True:
            files = _files_of(config, task_id, pid, since)
            open_files = [path for path in files if not _has_end(path)]
            if not open_files and (files or end["state"] != REVOKED):
                return  # the child wrote its own end (stored and removed, or still there)
            if not watch.alive() or time.monotonic() >= deadline:
                break
            watch.wait(min(0.05, max(0.0, deadline - time.monotonic())))
    files = _files_of(config, task_id, pid, since)
    if not files:
        if end["state"] == REVOKED:  # the child never opened a file for it: a row all the same
            _start_and_end(config, task_id, name, context, end)
        return
    for path in files:
        _append_end(path, end)


def _has_end(path: str) -> bool:
    """Whether the file's last record is an end (a file gone was stored with its end)."""
    try:
        with open(path, "rb") as reader:
            return _ends_with_end(_tail(reader))
    except OSError:
        return True


def _tail(reader: Any) -> bytes:
    size = os.fstat(reader.fileno()).st_size
    reader.seek(max(0, size - _TAIL_BYTES))
    data: bytes = reader.read()
    return data


def _append_end(path: str, end: dict[str, Any]) -> None:
    """Append `end` to the spool file at `path` unless its last record is an end already."""
    try:
        file = spool.SpoolFile.reopen(path)
    except OSError:
        return  # stored and removed by the collector: it had its end
    try:
        with open(path, "rb") as reader:
            tail = _tail(reader)
        if _ends_with_end(tail):
            return
        started = spool.parse_file_name(os.path.basename(path))
        now = time.time()
        record = {**end, "t": now}
        if started is not None:
            record["runtime"] = round(max(0.0, now - started.ns / 1e9), 6)
        # A record the child left without its newline (killed mid-write) must not swallow ours.
        file.write((b"" if not tail or tail.endswith(b"\n") else b"\n") + spool.encode(record))
    finally:
        file.close()


def _ends_with_end(tail: bytes) -> bool:
    body = tail[: tail.rfind(b"\n")] if tail.endswith(b"\n") else b""
    last = body[body.rfind(b"\n") + 1 :]
    return last.startswith(b'{"k":"end"')


def _start_and_end(
    config: ShimConfig, task_id: str, name: str | None, context: Any, end: dict[str, Any]
) -> None:
    """A spool file for a run that never started: its start and its end."""
    if spool.task_id_problem(task_id) is not None:
        return
    now = time.time()
    start: dict[str, Any] = {
        "k": spool.START,
        "v": spool.VERSION,
        "t": now,
        "task_id": task_id,
        "name": name,
        "host": os.environ.get("TASKLOG_HOST") or os.uname().nodename,
        "pid": os.getpid(),
        "worker": _text(getattr(context, "hostname", None)),
        "parent_id": _id_or_none(getattr(context, "parent_id", None)),
        "root_id": _id_or_none(getattr(context, "root_id", None)),
        "retries": _int(getattr(context, "retries", 0)),
        "max_lines": config.max_lines,
    }
    file = spool.SpoolFile(config.spool_dir, task_id)
    try:
        file.write(spool.encode(start) + spool.encode({**end, "t": now, "runtime": 0.0}))
    finally:
        file.close()


# -- small things -------------------------------------------------------------------------------


class _ExitWatch:
    """Whether a process has exited, and a wait that returns early when it does."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fd = -1

    def __enter__(self) -> _ExitWatch:
        with contextlib.suppress(AttributeError, OSError):
            self.fd = os.pidfd_open(self.pid)  # readable once the process has exited
        return self

    def __exit__(self, *_: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)

    def alive(self) -> bool:
        return pid_alive(self.pid)

    def wait(self, seconds: float) -> None:
        if self.fd >= 0:
            select.select([self.fd], [], [], seconds)
        else:
            time.sleep(seconds)


def _guarded(fn: Any, *args: Any) -> None:
    from capture_shim.capture import Stats, warn_once

    try:
        fn(*args)
    except Exception as exc:
        Stats.internal_errors += 1
        warn_once(f"verdict:{type(exc).__name__}", f"internal error ignored: {exc!r}")


def _id_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and spool.task_id_problem(value) is None else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _safe_str(exc: BaseException) -> str:
    with contextlib.suppress(Exception):
        return str(exc)
    return f"<unprintable {type(exc).__name__}>"
