"""The exactly-once pipeline's ports (`collector.pipeline`): the `Store` it commits batches to,
the `Publisher` it tells, and waiting for a store that is down.

The collector plugs in Postgres (`collector.store.Store`) and Redis
(`collector.publish.Publisher`); the unit tests plug in an in-memory store.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol, TypeVar

from collector.batch import Batch, FileState
from collector.copydata import Rows
from collector.stored import Stored
from tasklog.core.errors import StoreUnavailable

log = logging.getLogger("tasklog.collector")

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class After:
    """The batch before this one, committing on the pipeline's other connection.

    This batch begins once that one is `placed`: its days' partitions made and its tasks' rows
    locked, after which it waits for no lock another batch could hold. It commits once that
    one is `committed`, failing if that one failed. So the two never wait on each other in a
    circle. Such a circle cannot be seen by Postgres, as one of its waits is in this process,
    and it would stop the collector for good: the later batch locking a task's row (a retry's
    second run) or `lines` before the earlier one asked for it, then waiting for the earlier
    one's commit while that one waits for the lock.
    """

    placed: asyncio.Event
    committed: Awaitable[object]


class Store(Protocol):
    """Where batches are stored: one transaction per batch, offsets with the lines.

    `commit` raises `StoreUnavailable` when the store cannot be reached (the batch is then
    not stored at all) and `RecordRefused` when a value of the batch is refused (another
    batch would pass). `after` is the batch before, committing on another connection (see
    `After`); `placed` is set once this batch is placed (or failed).
    `losses` counts the connections lost: the next one may reach another server (a promoted
    standby), whose offsets are then the truth.
    """

    @property
    def losses(self) -> int: ...

    async def commit(
        self,
        batch: Batch,
        forget: Iterable[str] = (),
        *,
        trial: bool = False,
        after: After | None = None,
        placed: asyncio.Event | None = None,
    ) -> Stored: ...

    async def load_files(self) -> dict[str, FileState]: ...

    async def lose(self, state: FileState, reason: str) -> dict[str, Any] | None: ...

    async def replication_position(self) -> tuple[int | None, int | None]: ...

    async def close(self) -> None: ...


class Publisher(Protocol):
    """Where news of what was stored goes (Redis); it never fails the pipeline."""

    async def publish(self, lines: dict[str, list[Rows]], tasks: list[dict[str, Any]]) -> None: ...


async def until_available(
    fn: Callable[[], Awaitable[T]],
    stop: asyncio.Event,
    status: Callable[[str], None],
    first_error: BaseException | None = None,
) -> T | None:
    """Call `fn` until Postgres answers, backing off; None if asked to stop meanwhile.
    `status` hears "waiting for postgres" while it waits, "ok" once it answered."""
    delay = 0.2
    error = first_error
    warned = False
    while not stop.is_set():
        if error is None:
            try:
                result = await fn()
            except StoreUnavailable as exc:
                error = exc
            else:
                if warned:
                    log.info("Postgres reachable again; resuming from stored offsets")
                status("ok")
                return result
        if not warned:
            log.warning("Postgres unavailable (%s); retrying with backoff", error)
            warned = True
        status("waiting for postgres")
        error = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, 10.0)
    return None
