"""A task's live news written once for all its followers in step, on this process.

With thousands of clients on one task, what costs is per client: a push into each one's
buffer, a wake-up of each one's stream, a pass over each one's batch, a write through the
HTTP layer with its timeout. A task's `Broadcast` is one more subscription of the hub
(`Hub.attach`) that takes each message as it comes: it frames the lines once, and after a
short gathering (`linger`) writes the same bytes straight to the transport of every follower
it serves, its members. A member's own stream task sleeps meanwhile, its subscription paused
(`Hub.pause`): no push, no wake-up.

A follower joins (`join`) only in step: its subscription empty (it sent every message the
broadcast has seen), at the broadcast's last seq and status; so the two have sent the same
events, and the follower's share of what is gathered starts at its joining. The broadcast
hands followers back to their own streams (`Hub.resume`) whenever the news cannot be sent as
it stands; what was gathered is written to them first, so their seq is the broadcast's:
- Redis went away or came back (`RESYNC`), a lines message that does not follow the last seq,
  a task message announcing more lines: each member gets `RESYNC`, its stream reads Postgres;
- a finished status: the broadcast asks Postgres once for all its members (`_end`); when the
  task row says finished at the seq they were sent, they get its status and are finished
  (each stream sends ``end``), else they read Postgres themselves (and, if the row says the
  task still runs, may join again: a forged message does not end a broadcast);
- a member whose transport still holds more than `SLOW_BYTES` of what it was sent when the
  next write comes, or `SLOW_CHECK` after a write if none comes (a slow client), goes back
  to its stream alone, which first waits for its transport to drain and whose writes wait
  (each up to TASKLOG_API_SEND_TIMEOUT), and whose buffer bounds it
  (TASKLOG_API_CLIENT_BUFFER), as before; it joins again once caught up;
- a member whose client left, or a quiet spell (`TaskFollower.ride`'s resync interval).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from api import metrics, wire
from api.framing import line_frames, status_frame, status_key
from api.hub import RESYNC, Hub, Item, Subscription
from api.queries import Row
from tasklog.core.constants import FINISHED_STATES
from tasklog.core.errors import StoreUnavailable
from tasklog.core.messages import is_lines

log = logging.getLogger("tasklog.api.sse")

#: Reads a task's row from the primary (`api.queries.Store.task_progress`).
ReadTask = Callable[[str], Awaitable[Row | None]]

#: Writes per second a process's broadcasts aim to stay under: one is a `transport.write` of
#: the same bytes (~10-20 us, most of it the socket's `send`, which on loopback also runs the
#: reader's side of TCP). With N members on a process a broadcast gathers for N / WRITE_RATE
#: seconds (1,000 members: 0.1 s), at most MAX_LINGER (from 2,500 members on). At 5,000
#: clients on 2 processes, 20,000 writes/s per process cost p99 1.4-7.6 s on a loaded 2-core
#: machine where 10,000 gave 0.9 s (bench fanout).
WRITE_RATE = 10_000
MAX_LINGER = 0.25
#: Bytes of earlier writes still unsent on a member's transport when the next one comes,
#: beyond which it is a slow client (asyncio's default high-water mark): it goes back to its
#: own stream.
SLOW_BYTES = 64 * 1024
#: Seconds after a write at which the members are judged as the next write would judge them,
#: if none came first: a client that stops reading on the last news is handed back to its
#: stream, whose wait for the drain times out, rather than kept.
SLOW_CHECK = 0.5


class Transport(Protocol):
    """What a broadcast uses of a client's `asyncio.Transport`."""

    def write(self, data: bytes) -> None: ...
    def is_closing(self) -> bool: ...
    def get_write_buffer_size(self) -> int: ...


class Member(Protocol):
    """A follower a broadcast can serve (`api.sse.TaskFollower`)."""

    sub: Subscription
    last_seq: int
    status: tuple[object, ...] | None
    finished: bool

    @property
    def transport(self) -> Transport | None: ...

    @property
    def chunked(self) -> bool:
        """Whether its response is chunked (HTTP/1.1): each write is then one chunk."""


class Broadcast(Subscription):
    """One task's in-step followers on this process (see the module's docstring)."""

    def __init__(
        self,
        task_id: str,
        hub: Hub,
        linger: Callable[[], float],
        read_task: ReadTask | None = None,
    ) -> None:
        super().__init__(task_id, maxlen=1)
        self.covered = True
        self._hub = hub
        self._linger = linger
        self._read_task = read_task
        self._ending: asyncio.Task[None] | None = None
        #: The seq and status every member was sent (with what is gathered); None: unknown.
        self.last_seq: int | None = None
        self.status: tuple[object, ...] | None = None
        self.finished = False
        #: When the last message came (`time.monotonic`): a quiet spell sends members back.
        self.last_news = time.monotonic()
        #: Members, each with the index in `_pending` where its share starts.
        self._members: dict[Member, int] = {}
        self._pending: list[bytes] = []
        self._pending_statuses: list[int] = []  # indexes of status events in `_pending`
        self._flush_at: asyncio.Handle | None = None
        self._check_at: asyncio.Handle | None = None

    @property
    def size(self) -> int:
        """How many members it serves."""
        return len(self._members)

    def __contains__(self, member: object) -> bool:
        return member in self._members

    # -- followers in and out --------------------------------------------------------------

    def join(self, member: Member) -> bool:
        """Serve `member` from now on if it is in step (see the module); whether it joined."""
        transport = member.transport
        if (
            self.closed
            or self.finished
            or self.last_seq is None
            or member.last_seq != self.last_seq
            or member.status != self.status
            or member.sub.pending
            or _slow(transport)
        ):
            return False
        self._members[member] = len(self._pending)
        self._hub.pause(member.sub)
        return True

    def leave(self, member: Member, *, resync: bool = False) -> None:
        """Hand `member` back to its stream: its share of what is gathered written first, its
        subscription resumed (with `RESYNC` to read Postgres, else woken)."""
        start = self._members.pop(member, None)
        if start is None:
            return
        transport = member.transport
        if start < len(self._pending) and transport is not None and not transport.is_closing():
            share = self._share(start, {})
            transport.write(share[1] if member.chunked else share[0])
        member.last_seq = self.last_seq if self.last_seq is not None else member.last_seq
        member.status = self.status
        self._hub.resume(member.sub)
        if resync:
            member.sub.push(RESYNC)
        else:
            member.sub.wake()

    def leave_all(self, *, resync: bool = True) -> None:
        self.flush()
        for member in list(self._members):
            self.leave(member, resync=resync)

    # -- the hub's side --------------------------------------------------------------------

    def push(self, item: Item) -> None:
        """A message from the hub: gathered for the members, or the members sent back."""
        if self.closed:
            return
        self.last_news = time.monotonic()
        if item == RESYNC:
            self.leave_all()
            self.last_seq = None
            return
        assert not isinstance(item, str)
        if is_lines(item):
            frames = line_frames(item, self.task_id or "")
            if not frames:
                return
            last = self.last_seq
            if last is None or frames[0][0] > last + 1:
                # Something was missed (or omitted): the members read Postgres.
                self.leave_all()
                self.last_seq = frames[-1][0]
                return
            new = []
            for seq, data in frames:
                if seq > last:
                    new.append(data)
                    last = seq
            self.last_seq = last
            self._gather(new)
            return
        if item.get("status") in FINISHED_STATES:
            # Ended on Postgres's word alone (see `api.sse`), asked once for every member;
            # without members, each follower's stream asks for itself.
            if self._members and self._read_task is not None and self._ending is None:
                self.finished = True  # until Postgres says otherwise
                self._ending = asyncio.create_task(self._end(), name="sse-broadcast-end")
            else:
                self.leave_all()
            return
        announced = item.get("last_seq")
        if isinstance(announced, int) and self.last_seq is not None and announced > self.last_seq:
            self.leave_all()  # lines it has not seen are stored: the members read them
            self.last_seq = announced
            self.status = status_key(item)
            return
        key = status_key(item)
        if key != self.status:
            self.status = key
            self._gather([status_frame(item)], status=True)

    def close(self) -> None:
        super().close()
        self.leave_all(resync=False)
        for handle in (self._flush_at, self._check_at):
            if handle is not None:
                handle.cancel()
        self._flush_at = self._check_at = None
        if self._ending is not None:
            self._ending.cancel()

    async def _end(self) -> None:
        """The task finished, Redis says: the members' streams end if Postgres agrees that
        they were sent every line; otherwise each reads Postgres."""
        assert self._read_task is not None and self.task_id is not None
        try:
            try:
                row = await self._read_task(self.task_id)
            except StoreUnavailable as exc:
                log.warning("the end of task %s is read by each stream: %s", self.task_id, exc)
                return
            task = wire.task_json(row) if row is not None else None
            if task is not None and task.get("status") not in FINISHED_STATES:
                # Not finished after all (a forged message, or a retry has begun since): the
                # members read Postgres, and may join again.
                self.finished = False
                return
            if task is None or task.get("last_seq") != self.last_seq:
                return
            key = status_key(task)
            if key != self.status:
                self.status = key
                self._gather([status_frame(task)], status=True)
            self.flush()
            for member in list(self._members):
                member.finished = True
                self.leave(member)  # woken: its stream sends `end` and closes
        finally:
            self._ending = None
            self.leave_all()  # whoever is left reads Postgres

    # -- writing ---------------------------------------------------------------------------

    def _gather(self, frames: list[bytes], *, status: bool = False) -> None:
        if not self._members or not frames:
            return
        if status:
            self._pending_statuses.append(len(self._pending))
        self._pending.extend(frames)
        if self._flush_at is None:
            loop = asyncio.get_running_loop()
            delay = self._linger()
            self._flush_at = (
                loop.call_later(delay, self.flush) if delay >= 0.001 else loop.call_soon(self.flush)
            )

    def flush(self) -> None:
        """Write what is gathered to every member: the same bytes, one write each."""
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        if not self._pending:
            return
        shares: dict[int, tuple[bytes, bytes, int]] = {}
        slow = []
        lines = statuses = 0
        for member, start in self._members.items():
            if start >= len(self._pending):
                self._members[member] = 0  # joined after the last of it: nothing to write
                continue
            transport = member.transport
            if _slow(transport):
                # Gone, or it did not take what it was sent last time: back to its stream.
                slow.append(member)
                continue
            assert transport is not None
            share = self._share(start, shares)
            transport.write(share[1] if member.chunked else share[0])
            self._members[member] = 0
            statuses += share[2]
            lines += len(self._pending) - start - share[2]
        for member in slow:
            self.leave(member)
        self._pending = []
        self._pending_statuses = []
        if self._check_at is not None:
            self._check_at.cancel()
        # Should no write come next, the check it would make is made then (see `SLOW_CHECK`).
        self._check_at = asyncio.get_running_loop().call_later(SLOW_CHECK, self._check)
        if lines:
            metrics.SSE_EVENTS.labels(wire.NEW_LOG).inc(lines)
        if statuses:
            metrics.SSE_EVENTS.labels(wire.STATUS).inc(statuses)

    def _check(self) -> None:
        """`SLOW_CHECK` after a write, none since: who did not take it goes back to its
        stream."""
        self._check_at = None
        for member in [m for m in self._members if _slow(m.transport)]:
            self.leave(member)

    def _share(
        self, start: int, shares: dict[int, tuple[bytes, bytes, int]]
    ) -> tuple[bytes, bytes, int]:
        """What is gathered from `start` on: as is, as one HTTP chunk, and its status count."""
        share = shares.get(start)
        if share is None:
            body = b"".join(self._pending[start:])
            chunk = b"%x\r\n%s\r\n" % (len(body), body)
            share = shares[start] = (body, chunk, sum(i >= start for i in self._pending_statuses))
        return share


class Broadcasts:
    """The broadcasts of one process, one per task with followers (`follow`)."""

    def __init__(
        self,
        hub: Hub,
        read_task: ReadTask | None = None,
        *,
        rate: float = WRITE_RATE,
        max_linger: float = MAX_LINGER,
    ):
        self._hub = hub
        self._read_task = read_task
        self._rate = rate
        self._max_linger = max_linger
        self._by_task: dict[str, tuple[Broadcast, int]] = {}

    def members(self) -> int:
        return sum(b.size for b, _ in self._by_task.values())

    def linger(self) -> float:
        return min(self._max_linger, self.members() / self._rate)

    @contextmanager
    def follow(self, task_id: str) -> Iterator[Broadcast]:
        """The task's broadcast, for one follower whose subscription holds the channel; the
        broadcast goes when its last follower does."""
        entry = self._by_task.get(task_id)
        if entry is None:
            broadcast = Broadcast(task_id, self._hub, self.linger, self._read_task)
            self._hub.attach(broadcast)
            entry = (broadcast, 0)
        broadcast, count = entry
        self._by_task[task_id] = (broadcast, count + 1)
        try:
            yield broadcast
        finally:
            broadcast, count = self._by_task[task_id]
            if count > 1:
                self._by_task[task_id] = (broadcast, count - 1)
            else:
                del self._by_task[task_id]
                broadcast.close()
                self._hub.detach(broadcast)

    def close_all(self) -> None:
        for broadcast, _ in list(self._by_task.values()):
            broadcast.close()


def _slow(transport: Transport | None) -> bool:
    """Whether a member's client is gone or holds more than `SLOW_BYTES` of what it was sent."""
    return (
        transport is None
        or transport.is_closing()
        or transport.get_write_buffer_size() > SLOW_BYTES
    )
