"""A bound on the SSE streams one API process serves at once (`TASKLOG_API_MAX_STREAMS`).

Each stream holds a socket, a subscription and a task; without a bound, enough clients exhaust
the process's file descriptors and memory, and every stream suffers. A stream beyond the bound
is refused before it starts, with 503 and ``Retry-After``: the browser's EventSource gives up on
a 503, the page's own reconnect (and any client honouring Retry-After) tries again later.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

from api import metrics, params

#: Seconds a refused client is asked to wait.
RETRY_AFTER = 5


class StreamSlots:
    def __init__(self, size: int) -> None:
        self.size = size
        self.used = 0

    @contextmanager
    def take(self) -> Iterator[None]:
        """Hold a slot for one stream, or refuse it with 503 when all are taken."""
        if self.used >= self.size:
            metrics.SSE_REFUSED.inc()
            params.error(
                web.HTTPServiceUnavailable,
                f"this API process serves {self.size} streams already"
                f" (TASKLOG_API_MAX_STREAMS); retry in {RETRY_AFTER} s",
                headers={"Retry-After": str(RETRY_AFTER)},
            )
        self.used += 1
        try:
            yield
        finally:
            self.used -= 1
