"""Capture each Celery task's stdout, stderr and logging into a per-task spool file.

Two ways in::

    capture_shim.install(app)            # every task of the app

    @app.task(base=TerminalLoggingTask)  # one task at a time
    def job(): ...

Inside a task, ``capture_shim.progress(42, "halfway")`` records progress, as does
``self.update_state(meta={"progress": 42})`` or ``meta={"current": 3, "total": 7}``.
Importing the package changes nothing: `install` and `TerminalLoggingTask` connect the hooks
(`capture_shim.hooks`). This package depends on Celery and the standard library only.
"""

from __future__ import annotations

from capture_shim.capture import Stats
from capture_shim.config import ShimConfig
from capture_shim.hooks import TerminalLoggingTask, install, progress

__all__ = ["ShimConfig", "Stats", "TerminalLoggingTask", "install", "progress"]
