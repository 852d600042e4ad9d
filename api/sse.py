"""Server-Sent Events: a task's lines with no gap and no duplicate, and the task list's changes.

A task stream subscribes to the hub *before* it reads Postgres (the hub returns once Redis
confirmed the task's channel, or sends `RESYNC` when it confirms later), so a line committed
during the replay arrives through Redis as well; lines are sent in seq order and anything at
or below the last sent seq is dropped. A live batch that does not follow the last sent seq, a
task message announcing a higher ``last_seq``, a Redis outage (`RESYNC`) or a quiet spell all
lead back to Postgres, the source of truth. A finished status means every line is stored: the
stream replays what is left, sends ``end`` and closes.

With a read replica (TASKLOG_API_READ_URL) the lines are read from it, and the task row that
says how far they go from the primary: what the replica does not show yet (it lags) is read
from the primary, so a stream never skips a line nor ends early.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.web import BaseRequest
from aiohttp_sse import EventSourceResponse, sse_response

from api import keys, metrics, params, wire
from api.broadcast import Broadcast
from api.follow import follow
from api.framing import frame, line_frames, status_frame, status_key
from api.hub import RESYNC, Item, Subscription
from api.queries import Row, Store
from tasklog.core.constants import FINISHED_STATES, PENDING
from tasklog.core.errors import StoreUnavailable
from tasklog.core.messages import is_lines

log = logging.getLogger("tasklog.api.sse")

REPLAY_PAGE = 1000
#: Reconnection delay suggested to browsers, in milliseconds.
RETRY_MS = 2000


class Stream(EventSourceResponse):
    """An SSE response that can also send many events in one write (`lines`).

    It keeps what it needs of aiohttp-sse (the send timeout, the request whose transport a
    stalled client's write aborts) itself, through the public constructor and `prepare`:
    aiohttp-sse's private attributes may change in any release.
    """

    def __init__(
        self,
        *,
        status: int = 200,
        reason: str | None = None,
        headers: Mapping[str, str] | None = None,
        sep: str | None = None,
        allow_all_methods: bool = False,
        send_timeout: float | None = EventSourceResponse.DEFAULT_SEND_TIMEOUT,
        ping_interval: float = EventSourceResponse.DEFAULT_PING_INTERVAL,
    ) -> None:
        super().__init__(
            status=status,
            reason=reason,
            headers=headers,
            sep=sep,
            allow_all_methods=allow_all_methods,
            send_timeout=send_timeout,
            ping_interval=ping_interval,
        )
        self.send_timeout = send_timeout
        self._request: BaseRequest | None = None
        self._writer: AbstractStreamWriter | None = None

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        self._request = request
        self._writer = await super().prepare(request)
        return self._writer

    async def event(self, data: wire.Json, id: int | None = None, retry: int | None = None) -> None:
        await self.send(wire.dumps(data), id=None if id is None else str(id), retry=retry)
        metrics.SSE_EVENTS.labels(data["type"]).inc()

    async def lines(self, frames: list[bytes], statuses: int = 0) -> None:
        """Send events framed by `frame`, all in one write: ``new_log`` events, and
        `statuses` ``status`` events among them.

        aiohttp-sse writes each event on its own (a chunk and a syscall per event per client);
        with thousands of clients that is where the time goes. Same timeout and abort as
        `send`.
        """
        if not frames:
            return
        await self._within_timeout(self.write(b"".join(frames)))
        if statuses:
            metrics.SSE_EVENTS.labels(wire.STATUS).inc(statuses)
        if len(frames) > statuses:
            metrics.SSE_EVENTS.labels(wire.NEW_LOG).inc(len(frames) - statuses)

    async def wait_sent(self) -> None:
        """Wait until the transport holds no more than its high-water mark of what was written
        to it (by a task's broadcast, say); same timeout and abort as `send`."""
        if self._writer is not None:
            await self._within_timeout(self._writer.drain())

    async def _within_timeout(self, write: Awaitable[None]) -> None:
        try:
            async with asyncio.timeout(self.send_timeout):
                await write
        except ConnectionResetError:
            self.stop_streaming()
            raise
        except TimeoutError:
            self.stop_streaming()
            # A stalled peer never drains the buffer: a graceful close would wait forever.
            transport = self._request.transport if self._request is not None else None
            if transport is not None:
                transport.abort()
            raise


class TaskFollower:
    """One client following one task: what was sent, and how to send what comes next (a
    `api.follow.Source`)."""

    #: Lines are whole only from Postgres: news that came while it was away is read there.
    news_while_behind = False

    def __init__(
        self,
        stream: Stream,
        request: web.Request,
        task_id: str,
        after: int,
        sub: Subscription,
        broadcast: Broadcast | None = None,
    ) -> None:
        self.stream = stream
        #: Where lines are read (a replica, with TASKLOG_API_READ_URL), and the primary, which
        #: has what the replica may not show yet.
        self.store = request.app[keys.STORE]
        self.primary = request.app[keys.PRIMARY]
        self.task_id = task_id
        self.last_seq = after
        self.status: tuple[object, ...] | None = None
        self.finished = False
        self.sub = sub
        #: What the task's broadcast needs to write to this client itself (`ride`).
        self.broadcast = broadcast
        self.transport = request.transport
        self.chunked = stream.headers.get(hdrs.TRANSFER_ENCODING) == "chunked"
        self.resync = request.app[keys.SETTINGS].api_sse_resync

    async def ride(self) -> None:
        """While this stream is in step with the task's broadcast, the broadcast sends for it
        (`api.broadcast`); returns when the stream must send again (or ends)."""
        broadcast = self.broadcast
        if broadcast is None or not broadcast.join(self):
            return
        try:
            while self in broadcast and not self.sub.pending:
                await self.sub.wait(self.resync)
                if time.monotonic() - broadcast.last_news >= self.resync:
                    # A quiet spell: read Postgres, as a stream of its own does.
                    broadcast.leave(self, resync=True)
        finally:
            broadcast.leave(self)
        # What the broadcast wrote may still be on its way: this stream writes next only
        # once it has gone, as its own writes would have waited (a slow client's drain
        # times out and drops it).
        await self.stream.wait_sent()

    async def replay(self, until: int | None = None) -> None:
        """Send every stored line after the last one sent; `until`: lines up to that seq are
        known to be stored (Redis said so, or the primary's task row), and those a lagging
        replica does not show yet are read from the primary."""
        await self._replay_from(self.store)
        if until is not None and self.last_seq < until and self.primary is not self.store:
            metrics.REPLICA_FILL_INS.inc()
            await self._replay_from(self.primary)

    async def _replay_from(self, store: Store) -> None:
        while True:
            rows = await store.lines_after(self.task_id, self.last_seq, REPLAY_PAGE)
            await self.stream.lines(
                [frame(wire.dumps(wire.line_json(row, self.task_id)), row["seq"]) for row in rows]
            )
            if rows:
                self.last_seq = rows[-1]["seq"]
            if len(rows) < REPLAY_PAGE:
                return

    async def on_batch(self, batch: list[Item]) -> None:
        """Live messages in order, in one write: the lines, and the status events between
        them, unless Postgres must be read in between."""
        pending: list[bytes] = []
        statuses = 0
        for message in batch:
            if message == RESYNC:
                continue  # `follow` reads Postgres for a batch holding one
            assert not isinstance(message, str)
            if not is_lines(message):
                if message.get("status") in FINISHED_STATES:
                    # The stream ends on Postgres's word alone: whoever can publish on Redis
                    # cannot end it (nor show a finished state) while the task runs.
                    await self.stream.lines(pending, statuses)
                    pending, statuses = [], 0
                    await self.refresh()
                    if self.finished:
                        break
                    continue
                if self._announces_more(message):
                    await self.stream.lines(pending, statuses)
                    pending, statuses = [], 0
                    await self.on_task(message)
                else:
                    status = self._status_frame(message)
                    if status is not None:
                        pending.append(status)
                        statuses += 1
                if self.finished:
                    break
                continue
            frames = line_frames(message, self.task_id)
            if frames and frames[0][0] > self.last_seq + 1:
                await self.stream.lines(pending, statuses)
                pending, statuses = [], 0
                # Something was missed (or omitted): Postgres has it all, this message too.
                await self.replay(until=frames[-1][0])
                continue
            for seq, data in frames:
                if seq > self.last_seq:
                    pending.append(data)
                    self.last_seq = seq
        await self.stream.lines(pending, statuses)

    async def on_task(self, task: Mapping[str, object]) -> None:
        if self._announces_more(task):
            # Lines this stream has not seen are stored: send them first, all of them (a
            # finished status ends the stream).
            announced = task.get("last_seq")
            if not isinstance(announced, int):
                row = await self.primary.task_progress(self.task_id)
                announced = row["last_seq"] if row is not None else None
            await self.replay(until=announced)
        await self.send_status(task)

    def _announces_more(self, task: Mapping[str, object]) -> bool:
        """Whether a task message says lines this stream was not sent are stored."""
        announced = task.get("last_seq")
        return (announced is None and task.get("status") in FINISHED_STATES) or (
            isinstance(announced, int) and announced > self.last_seq
        )

    async def send_status(self, task: Mapping[str, object]) -> None:
        status = self._status_frame(task)
        if status is not None:
            await self.stream.lines([status], statuses=1)

    def _status_frame(self, task: Mapping[str, object]) -> bytes | None:
        """The status event of a task message if its status changed (else None); notes
        whether the task finished."""
        if task.get("status") in FINISHED_STATES:
            self.finished = True
        key = status_key(task)
        if key == self.status:
            return None
        self.status = key
        return status_frame(task)

    @property
    def what(self) -> str:
        return f"task {self.task_id} (at seq {self.last_seq})"

    async def catch_up(self) -> None:
        await self.refresh()

    async def refresh(self, row: Row | None = None) -> None:
        """Catch up from Postgres alone: the task first, from the primary (a finished task
        has all its lines stored), then its lines up to its last seq, then its state."""
        if row is None:
            row = await self.primary.task_progress(self.task_id)
        await self.replay(until=row["last_seq"] if row is not None else None)
        if row is not None:
            await self.on_task(wire.task_json(row))


async def task_stream(request: web.Request) -> web.StreamResponse:
    """``GET /tasklog/sse/task/{task_id}/``: replay after Last-Event-ID, then follow live."""
    with request.app[keys.SLOTS].take():
        return await _task_stream(request)


async def _task_stream(request: web.Request) -> web.StreamResponse:
    task_id = params.task_id(request)
    after = params.after_seq(request)
    app = request.app
    settings, hub = app[keys.SETTINGS], app[keys.HUB]
    async with hub.subscribe(task_id, settings.api_client_buffer) as sub:
        # The first read happens before the response starts, so a dead Postgres is a 503.
        row = await app[keys.PRIMARY].task_progress(task_id)
        async with open_stream(request, sub) as stream:
            with app[keys.BROADCASTS].follow(task_id) as broadcast:
                follower = TaskFollower(stream, request, task_id, after, sub, broadcast)
                await stream.event(
                    {"type": wire.CONNECTED, "task_id": task_id, "after_seq": after}, retry=RETRY_MS
                )
                if row is None:
                    await follower.send_status(_pending(task_id))
                try:
                    await follow(
                        follower,
                        sub,
                        lambda: hub.live and sub.covered,
                        settings,
                        streams=hub.clients,
                        ride=follower.ride,
                    )
                    if follower.finished:
                        await stream.event(
                            {"type": wire.END, "task_id": task_id, "last_seq": follower.last_seq}
                        )
                except StoreUnavailable as exc:
                    # Headers are sent: end the stream; the browser retries with Last-Event-ID.
                    log.warning("stream of task %s ended: %s", task_id, exc)
                except ConnectionResetError:
                    pass  # the client went away
                except TimeoutError:
                    _stalled(
                        settings.api_send_timeout, f"task {task_id} (near seq {follower.last_seq})"
                    )
    return stream


async def tasks_stream(request: web.Request) -> web.StreamResponse:
    """``GET /tasklog/sse/tasks/``: every task change, for the list page."""
    with request.app[keys.SLOTS].take():
        return await _tasks_stream(request)


class TaskListFollower:
    """One client following every task's changes (the list page): a `api.follow.Source`."""

    what = "the task list"
    finished = False
    #: A task message is whole: sent even while Postgres is away.
    news_while_behind = True

    def __init__(self, stream: Stream, store: Store, since: datetime) -> None:
        self.stream = stream
        self.store = store
        #: The newest change sent from Postgres: a catch-up sends what changed after it.
        self.since = since

    async def catch_up(self) -> None:
        for row in await self.store.tasks_updated_since(self.since):
            self.since = max(self.since, row.pop("updated_at"))
            await self.stream.event(wire.status_event(wire.task_json(row)))

    async def on_batch(self, batch: list[Item]) -> None:
        for task in batch:  # the tasks channel only: task messages
            if isinstance(task, dict):
                await self.stream.event(wire.status_event(task))


async def _tasks_stream(request: web.Request) -> web.StreamResponse:
    app = request.app
    settings, hub, store = app[keys.SETTINGS], app[keys.HUB], app[keys.STORE]
    # A page passes the time it was rendered: changes since then are sent first, so none
    # falls between the page and its stream.
    given = params.timestamp(request, "since")
    async with hub.subscribe(None, settings.api_client_buffer) as sub:
        since = given or await _now(store)
        async with open_stream(request, sub) as stream:
            await stream.event({"type": wire.CONNECTED}, retry=RETRY_MS)
            follower = TaskListFollower(stream, store, since)
            try:
                await follow(
                    follower, sub, lambda: hub.live, settings, catch_up_first=given is not None
                )
            except ConnectionResetError:
                pass
            except TimeoutError:
                _stalled(settings.api_send_timeout, "the task list")
    return stream


async def test_stream(request: web.Request) -> web.StreamResponse:
    """``GET /tasklog/sse/test/``: the seed's test stream, a counter every second."""
    with request.app[keys.SLOTS].take():
        return await _test_stream(request)


async def _test_stream(request: web.Request) -> web.StreamResponse:
    count = params.integer(request, "count", 10, 1, 1000)
    interval = params.integer(request, "interval_ms", 1000, 10, 60_000) / 1000
    settings = request.app[keys.SETTINGS]
    async with sse_response(
        request, response_cls=Stream, ping_interval=settings.api_sse_heartbeat
    ) as stream:
        request.app[keys.STREAMS].add(stream)
        await stream.event({"type": wire.CONNECTED})
        try:
            for i in range(1, count + 1):
                await stream.event({"type": "test", "count": i}, id=i)
                await asyncio.sleep(interval)
            await stream.event({"type": wire.END})
        except (ConnectionResetError, TimeoutError):
            pass
    return stream


def _stalled(timeout: float, what: str) -> None:
    """A client that stopped reading: its connection is aborted (by the write that timed out),
    so its buffers go with it; a browser resumes with Last-Event-ID."""
    metrics.SSE_SEND_TIMEOUTS.inc()
    log.info(
        "dropped a client of %s: a write waited more than %g s (TASKLOG_API_SEND_TIMEOUT)",
        what,
        timeout,
    )


def _pending(task_id: str) -> wire.Json:
    return {"task_id": task_id, "status": PENDING, "progress": None, "progress_message": None}


async def _now(store: Store) -> datetime:
    info = await store.server_info()
    assert info is not None
    now: datetime = info["now"]
    return now


@asynccontextmanager
async def open_stream(request: web.Request, sub: Subscription) -> AsyncIterator[Stream]:
    """Start an SSE response for a subscription (every kind of stream: task, task list,
    workflow); a lost client closes the subscription. The caller holds a stream slot."""
    settings = request.app[keys.SETTINGS]
    label = "task" if sub.task_id is not None else "tasks"
    async with sse_response(
        request,
        response_cls=Stream,
        ping_interval=settings.api_sse_heartbeat,
        send_timeout=settings.api_send_timeout,
    ) as stream:
        request.app[keys.STREAMS].add(stream)
        metrics.SSE_CLIENTS.labels(label).inc()
        # The heartbeat task ends when the connection is lost: wake the follower then.
        watch = asyncio.create_task(stream.wait(), name="sse-watch")
        watch.add_done_callback(lambda _: sub.close())
        try:
            yield stream
        finally:
            metrics.SSE_CLIENTS.labels(label).dec()
            watch.cancel()
            await asyncio.wait({watch})
