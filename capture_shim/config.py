"""The shim's few settings, read from the environment without pydantic.

A worker host installs only Celery and this package; the collector and API validate the same
variables with pydantic-settings. A bad value here falls back to the default with a warning
rather than stopping a worker.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

from tasklog.core.constants import DEFAULT_MAX_LINE_BYTES, DEFAULT_MAX_LINES

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

DEFAULT_SPOOL_DIR = "/var/spool/tasklog"

#: (variable, default, description) of each setting the shim reads, for the settings table.
DOCUMENTED: tuple[tuple[str, str, str], ...] = (
    ("TASKLOG_ENABLED", "true", "Capture task output at all; false costs next to nothing."),
    ("TASKLOG_SPOOL_DIR", DEFAULT_SPOOL_DIR, "Directory the shim writes spool files to."),
    (
        "TASKLOG_MAX_LINES",
        str(DEFAULT_MAX_LINES),
        "Lines kept per task run: the first half and the last half.",
    ),
    (
        "TASKLOG_MAX_LINE_BYTES",
        str(DEFAULT_MAX_LINE_BYTES),
        "Longest line kept; longer ones are cut with a marker.",
    ),
    ("TASKLOG_RECORD_ARGS", "false", "Store task args and kwargs (they may hold secrets)."),
    (
        "TASKLOG_CAPTURE_FD",
        "true",
        "Capture fd 1/2 too (subprocesses, C code) in prefork and solo pools.",
    ),
    ("TASKLOG_TEE", "false", "Also echo captured output to the worker's own stdout/stderr."),
    (
        "TASKLOG_SHIM_SPEEDUPS",
        "true",
        "Use the shim's compiled line writer when it was built; false: the Python one.",
    ),
)


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    warnings.warn(f"{name}={raw!r} is not a boolean; using {default}", stacklevel=3)
    return default


def _int(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        warnings.warn(
            f"{name}={raw!r} must be an integer >= {minimum}; using {default}", stacklevel=3
        )
        return default
    return value


@dataclass(frozen=True, slots=True)
class ShimConfig:
    enabled: bool
    spool_dir: str
    max_lines: int
    max_line_bytes: int
    record_args: bool
    #: Capture fd 1/2 too (subprocesses, os.write, C code) where one task owns the process.
    capture_fd: bool = True
    #: Also echo captured output to the worker's own stdout/stderr.
    tee: bool = False

    @classmethod
    def from_env(cls) -> ShimConfig:
        return cls(
            enabled=_bool("TASKLOG_ENABLED", True),
            spool_dir=os.environ.get("TASKLOG_SPOOL_DIR") or DEFAULT_SPOOL_DIR,
            max_lines=_int("TASKLOG_MAX_LINES", DEFAULT_MAX_LINES, 2),
            max_line_bytes=_int("TASKLOG_MAX_LINE_BYTES", DEFAULT_MAX_LINE_BYTES, 64),
            record_args=_bool("TASKLOG_RECORD_ARGS", False),
            capture_fd=_bool("TASKLOG_CAPTURE_FD", True),
            tee=_bool("TASKLOG_TEE", False),
        )


def speedups_wanted() -> bool:
    """Whether to use the compiled line writer if it is there (read once, at import)."""
    return _bool("TASKLOG_SHIM_SPEEDUPS", True)
