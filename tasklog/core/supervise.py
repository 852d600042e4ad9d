"""Long-lived side tasks that never limp on silently.

A process's side tasks (the API's Redis hub and its watched-set refresher, the collector's file
watcher, the systemd watchdog pinger) run for the life of the process. `restarting` runs one
for ever: when it raises, expected or not, the failure is logged once, the task is started
again after a backoff that doubles up to a cap, and `on_down` / `on_up` let the owner say that
it is degraded meanwhile. A task that returns is done (its stop event was set).

`stop_on_exit` is for the one place that watches the supervisors themselves: a supervisor that
ends with an error it could not handle stops the process loudly instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable

__all__ = ["restarting", "stop_on_exit"]

log = logging.getLogger(__name__)


async def restarting(
    name: str,
    run: Callable[[], Awaitable[None]],
    *,
    first_delay: float = 0.1,
    max_delay: float = 5.0,
    on_down: Callable[[BaseException], None] | None = None,
    logger: logging.Logger = log,
) -> None:
    """Run `run()` until it returns; restart it with a backoff each time it raises.

    Each failure is logged once: the first of a streak at ERROR with its traceback, a repeat
    of the same failure at DEBUG. A run that lasted longer than `max_delay` ends the streak
    (the delay starts again from `first_delay`). `CancelledError` is never swallowed.
    """
    delay = first_delay
    last: str | None = None
    while True:
        started = time.monotonic()
        try:
            await run()
            return
        except Exception as exc:
            if time.monotonic() - started > max_delay:
                delay, last = first_delay, None
            what = f"{type(exc).__name__}: {exc}"
            if what != last:
                logger.error(
                    "%s failed (%s); restarting it in %.1fs", name, what, delay, exc_info=exc
                )
            else:
                logger.debug("%s failed again (%s); restarting in %.1fs", name, what, delay)
            last = what
            if on_down is not None:
                on_down(exc)
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay)


def stop_on_exit(task: asyncio.Task[None]) -> None:
    """A done-callback for a supervisor: if it ended with an error, stop the process loudly.

    The process gets SIGTERM, so it shuts down the way an operator's stop would (streams
    closed, pools drained) and its supervisor (systemd, Kubernetes) starts it again.
    """
    if task.cancelled():
        return
    exc = task.exception()
    if exc is None:
        return
    log.critical(
        "side task %s stopped: %s; stopping the process", task.get_name(), exc, exc_info=exc
    )
    os.kill(os.getpid(), signal.SIGTERM)
