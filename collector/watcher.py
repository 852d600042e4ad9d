"""The spool directory's file watcher: which files changed, told to the collector's loop.

On Linux it is inotify itself, read on the event loop (`inotify_simple` wraps the system
calls): a change after a quiet spell is reported at once, and no thread polls while nothing
changes. After each report it stops listening for `step` milliseconds, in which the kernel
gathers what comes into one queued event per file: a task printing thousands of lines a
second is reported at most once a step, not once a line. Batching is the pipeline's
(`collector.cadence`), not the watcher's. Elsewhere `watchfiles` does the same, by polling:
one look every `step`.

Only changes that may bring something to read count: a file created, written, closed or
moved in. A file deleted (the collector deletes those it stored) is not reported; the
rescans find files gone.

A watch begins by reporting every file already in the directory: one made after the
collector's last scan and before the watch (a worker writing as the collector starts, or
while its watcher is restarted) is otherwise found only by the next rescan
(TASKLOG_RESCAN_INTERVAL). The polled watcher looks before its first poll; a file made
between the two is left to the rescans.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["follow", "step_ms"]

Changed = Callable[[set[str]], None]


def step_ms(debounce_ms: int) -> int:
    """The watcher's step for TASKLOG_DEBOUNCE_MS: a tenth of it, 1 to 10 ms."""
    return max(1, min(10, debounce_ms // 10))


async def follow(path: Path, step: int, changed: Changed) -> None:
    """Call `changed` with the names of the files in `path` that changed, within `step`
    milliseconds of each change (at once after a quiet spell, on Linux), until cancelled; a
    watcher that fails (inotify limits, the directory gone) raises."""
    if sys.platform == "linux":
        await _inotify(path, step, changed)
    else:
        await _polled(path, step, changed)


async def _inotify(path: Path, step: int, changed: Changed) -> None:
    from inotify_simple import INotify, flags

    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    with INotify(nonblocking=True) as inotify:
        inotify.add_watch(path, flags.CREATE | flags.MODIFY | flags.CLOSE_WRITE | flags.MOVED_TO)
        _report_present(path, changed)
        while True:
            loop.add_reader(inotify.fileno(), ready.set)
            try:
                await ready.wait()
            finally:
                loop.remove_reader(inotify.fileno())
            ready.clear()
            names = set()
            for event in inotify.read(timeout=0):
                if event.mask & flags.Q_OVERFLOW:
                    # Events were lost (the queue filled): every file may have changed.
                    names.update(os.listdir(path))
                elif event.mask & flags.IGNORED:
                    raise OSError(f"the watch on {path} ended (the directory was removed?)")
                elif event.name:
                    names.add(event.name)
            if names:
                changed(names)
            await asyncio.sleep(step / 1000)  # the kernel gathers what comes meanwhile


async def _polled(path: Path, step: int, changed: Changed) -> None:
    from watchfiles import Change, awatch

    _report_present(path, changed)
    async for changes in awatch(
        path,
        debounce=step,
        step=step,
        recursive=False,
        rust_timeout=1000,
        yield_on_timeout=False,
        watch_filter=None,  # the caller looks at the names it wants
    ):
        names = {os.path.basename(p) for change, p in changes if change != Change.deleted}
        if names:
            changed(names)


def _report_present(path: Path, changed: Changed) -> None:
    """Every file in `path` now, as changed (a watch's beginning)."""
    names = set(os.listdir(path))
    if names:
        changed(names)
