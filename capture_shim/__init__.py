"""Capture each Celery task's stdout, stderr and logging into a per-task spool file.

Two ways in::

    capture_shim.install(app)            # every task of the app

    @app.task(base=TerminalLoggingTask)  # one task at a time
    def job(): ...

Inside a task, ``capture_shim.progress(42, "halfway")`` records progress, as does
``self.update_state(meta={"progress": 42})`` or ``meta={"current": 3, "total": 7}``;
``with capture_shim.group("Title"):`` folds the block's lines under a title in the log view.
Importing the package captures nothing: `install` and `TerminalLoggingTask` connect the hooks
(`capture_shim.hooks`). In a process that has imported Celery already, it connects one check to
`worker_init`: a worker whose app was never given to `install` (and has no
`TerminalLoggingTask`) says once, on its stderr, that nothing of it is captured. This package
depends on Celery and the standard library only.

The public names are imported on first use (PEP 562): the collector reads the spool format
(`capture_shim.spool`) and must not pay for importing Celery to do so.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from capture_shim.capture import Stats
    from capture_shim.config import ShimConfig
    from capture_shim.groups import group
    from capture_shim.hooks import TerminalLoggingTask, install, progress

__all__ = ["ShimConfig", "Stats", "TerminalLoggingTask", "group", "install", "progress"]

#: Where each public name lives.
_HOMES = {
    "ShimConfig": "capture_shim.config",
    "Stats": "capture_shim.capture",
    "TerminalLoggingTask": "capture_shim.hooks",
    "group": "capture_shim.groups",
    "install": "capture_shim.hooks",
    "progress": "capture_shim.hooks",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # asked once: later lookups find it without this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def _check_worker(sender: Any = None, **_: Any) -> None:
    """`worker_init`: warn when the worker's app is not captured (`hooks.check_installed`)."""
    try:
        importlib.import_module("capture_shim.hooks").check_installed(getattr(sender, "app", None))
    except Exception:
        pass  # a check: never in the worker's way


# Only where Celery is there already: the collector reads `capture_shim.spool` without Celery.
if "celery" in sys.modules:
    importlib.import_module("celery.signals").worker_init.connect(_check_worker, weak=False)
