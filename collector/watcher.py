"""The spool directory's file watcher: which files changed, told to the event loop at once.

`watchfiles` (inotify) runs in a thread of its own and reports a change once no other came
for one `step`, or once changes kept coming for as long (its `debounce`): that is how long a
print may wait here before the collector knows of it. Batching is the pipeline's
(`collector.cadence`), not the watcher's. Each report reaches the loop as one callback
(`loop.call_soon_threadsafe`): `watchfiles.awatch` costs the loop ~0.1 ms per report (a thread
hand-off, a task group, a path filter), and a stream of small tasks makes one about every
millisecond.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from pathlib import Path

from watchfiles import watch

__all__ = ["follow", "step_ms"]


def step_ms(debounce_ms: int) -> int:
    """The watcher's step for TASKLOG_DEBOUNCE_MS: a tenth of it, 1 to 10 ms (a step of 10 ms
    made 17 of the 19 ms from print to browser, docs/BENCHMARKS.md)."""
    return max(1, min(10, debounce_ms // 10))


async def follow(path: Path, step_ms: int, changed: Callable[[set[str]], None]) -> None:
    """Call `changed` on the running loop with the names of the files in `path` that changed,
    within `step_ms` of each change, until cancelled (or until the watcher fails: raised)."""
    loop = asyncio.get_running_loop()
    stop = threading.Event()

    def watching() -> None:
        for changes in watch(
            path,
            stop_event=stop,
            debounce=step_ms,
            step=step_ms,
            recursive=False,
            rust_timeout=1000,
            yield_on_timeout=False,
            watch_filter=None,  # the caller looks at the names it wants
        ):
            loop.call_soon_threadsafe(changed, {os.path.basename(p) for _, p in changes})

    thread = asyncio.ensure_future(asyncio.to_thread(watching))
    try:
        await asyncio.shield(thread)
    finally:
        stop.set()  # cancelled or failed: the thread ends within a step
        await asyncio.wait({thread})
