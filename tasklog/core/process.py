"""Whether a process is still there, as the collector (writers) and the embedded servers need."""

from __future__ import annotations

import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs; a zombie (dead, not yet reaped by its parent) counts as gone.

    A process of another user (EPERM) is alive: the collector runs as its own user, apart from
    the workers whose pids it checks.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): trust kill()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def runs_as(pid: int, uid: int) -> bool:
    """Whether `pid` runs as `uid` (the owner of its /proc entry); True where /proc is
    missing (then only `pid_alive` can be asked)."""
    try:
        return os.stat(f"/proc/{pid}").st_uid == uid
    except FileNotFoundError:
        return not Path("/proc/self").exists()
    except OSError:
        return True
