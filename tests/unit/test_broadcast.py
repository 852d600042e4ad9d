"""`api.broadcast`: a task's followers in step get the same bytes, each line once and in
order; whatever the broadcast cannot send as it stands sends them back to their own streams
at the seq they were sent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, cast

from api.broadcast import SLOW_BYTES, SLOW_CHECK, Broadcast, Broadcasts
from api.framing import line_frames
from api.hub import RESYNC, Hub, Subscription
from tasklog.core.messages import LinesMessage, TaskMessage

TASK = "t1"


class Transport:
    """What a broadcast needs of an asyncio transport; `stalled` stops the peer reading."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False
        self.stalled = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return sum(map(len, self.written)) if self.stalled else 0


class Follower:
    def __init__(self, sub: Subscription, last_seq: int, chunked: bool = True) -> None:
        self.sub = sub
        self.last_seq = last_seq
        self.status: tuple[object, ...] | None = None
        self.finished = False
        self.transport = Transport()
        self.chunked = chunked

    def body(self) -> bytes:
        """What the client received, chunked framing removed."""
        out = b""
        for data in self.transport.written:
            if self.chunked:
                size, _, rest = data.partition(b"\r\n")
                assert rest.endswith(b"\r\n") and len(rest) == int(size, 16) + 2
                data = rest[:-2]
            out += data
        return out


def lines(first: int, last: int) -> LinesMessage:
    return {
        "task_id": TASK,
        "lines": [
            {
                "seq": s,
                "ts": "2026-01-01T00:00:00+00:00",
                "stream": "stdout",
                "level": None,
                "message": f"l{s}",
            }
            for s in range(first, last + 1)
        ],
    }


def framed(first: int, last: int) -> bytes:
    return b"".join(data for _, data in line_frames(lines(first, last), TASK))


def task(status: str = "STARTED", last_seq: int = 0, **fields: object) -> TaskMessage:
    """A task message (the fields a stream looks at)."""
    message = {"task_id": TASK, "status": status, "progress": None, "last_seq": last_seq}
    return cast(TaskMessage, {**message, **fields})


@asynccontextmanager
async def setup(
    n: int, linger: float = 0.0, stored: dict[str, Any] | None = None
) -> AsyncIterator[tuple[Hub, Broadcast, list[Follower]]]:
    """A hub without Redis, `n` followers of TASK and its broadcast; `stored`: the task's row
    in Postgres (its `state` and `last_seq`)."""

    async def read_task(task_id: str) -> dict[str, Any] | None:
        assert task_id == TASK
        if stored is None:
            return None
        return {"task_id": TASK, "progress": 100.0, "progress_message": None, **stored}

    hub = Hub(None)
    async with AsyncExitStack() as stack:
        subs = [await stack.enter_async_context(hub.subscribe(TASK, 100)) for _ in range(n)]
        broadcasts = Broadcasts(hub, read_task, rate=1e9, max_linger=linger)
        broadcast = stack.enter_context(broadcasts.follow(TASK))
        yield hub, broadcast, [Follower(sub, 0) for sub in subs]


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def in_step(broadcast: Broadcast, followers: Iterable[Follower], last: int) -> None:
    """The broadcast sees lines 1..`last`, which each follower's stream sent too: all join."""
    broadcast.push(lines(1, last))
    for follower in followers:
        follower.last_seq = last  # what each one's stream sent of the same message
        assert broadcast.join(follower)


async def test_followers_in_step_get_every_line_once_in_order() -> None:
    async with setup(3) as (hub, broadcast, followers):
        # Not in step before it has seen a line: the followers send for themselves.
        assert not broadcast.join(followers[0])
        in_step(broadcast, followers, 5)
        broadcast.push(lines(6, 8))
        broadcast.push(lines(8, 10))  # 8 again: sent once
        await settle()
        for follower in followers:
            assert follower.body() == framed(6, 10)
            assert not follower.sub.pending  # its stream was pushed nothing
        assert hub.clients() == 3


async def test_one_write_per_gathering_and_a_late_joiner_gets_only_what_follows() -> None:
    async with setup(2, linger=0.05) as (_, broadcast, (early, late)):
        broadcast.push(lines(1, 2))
        early.last_seq = 2
        assert broadcast.join(early)
        broadcast.push(lines(3, 4))
        late.last_seq = 4  # its own stream sent 3 and 4 already
        assert broadcast.join(late)
        broadcast.push(lines(5, 6))
        await asyncio.sleep(0.1)
        assert len(early.transport.written) == 1
        assert early.body() == framed(3, 6)
        assert late.body() == framed(5, 6)


async def test_a_gap_sends_members_back_to_postgres_at_the_seq_they_were_sent() -> None:
    async with setup(2, linger=10) as (_, broadcast, followers):
        in_step(broadcast, followers, 1)
        broadcast.push(lines(2, 3))
        broadcast.push(lines(7, 8))  # 4-6 missed on Redis
        for follower in followers:
            assert follower.body() == framed(2, 3)  # what was gathered, written first
            assert follower.last_seq == 3
            assert follower.sub.take() == [RESYNC]  # its stream reads the rest in Postgres
            assert follower not in broadcast


async def test_a_slow_client_goes_back_alone_and_the_others_go_on() -> None:
    async with setup(2) as (_, broadcast, (slow, quick)):
        in_step(broadcast, (slow, quick), 1)
        slow.transport.stalled = True  # from now on, nothing it is sent leaves its transport
        big = SLOW_BYTES // 100
        broadcast.push(lines(2, big))
        await settle()
        assert slow in broadcast  # a big write is not slowness; failing to take it is
        broadcast.push(lines(big + 1, big + 1))
        await settle()
        assert slow not in broadcast and quick in broadcast
        assert slow.last_seq == big + 1  # what was gathered for it, written as it left
        assert slow.sub.take() == []  # no RESYNC: its stream follows on from where it is
        broadcast.push(lines(big + 2, big + 2))
        await settle()
        assert quick.body() == framed(2, big + 2)
        assert slow.body() == framed(2, big + 1)
        assert not broadcast.join(slow)  # not while its transport holds that much


async def test_a_client_that_stalls_on_the_last_news_goes_back_without_another_write() -> None:
    async with setup(2) as (_, broadcast, (slow, quick)):
        in_step(broadcast, (slow, quick), 1)
        slow.transport.stalled = True
        big = SLOW_BYTES // 100
        broadcast.push(lines(2, big))  # and then no more news
        await settle()
        assert slow in broadcast and quick in broadcast
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SLOW_CHECK + 5
        while slow in broadcast and loop.time() < deadline:
            await asyncio.sleep(0.05)
        # Back to its stream, whose wait for the drain times out and drops it.
        assert slow not in broadcast and quick in broadcast
        assert slow.sub.take() == [] and slow.last_seq == big
        assert quick.body() == slow.body() == framed(2, big)


async def test_a_finished_status_read_once_in_postgres_ends_every_member() -> None:
    async with setup(2, stored={"state": "SUCCESS", "last_seq": 3}) as (_, broadcast, followers):
        in_step(broadcast, followers, 3)
        broadcast.push(task("SUCCESS", last_seq=3))
        await settle()
        for follower in followers:
            assert follower.finished  # its stream sends `end` and closes
            assert follower not in broadcast
            assert follower.sub.take() == []  # nothing to read in Postgres
            assert follower.body().count(b'"type":"status"') == 1
            assert b'"finished":true' in follower.body()


async def test_a_finished_status_postgres_does_not_confirm_sends_members_to_postgres() -> None:
    # Redis says finished; Postgres says more lines are stored (or not finished at all).
    for stored in ({"state": "SUCCESS", "last_seq": 9}, {"state": "STARTED", "last_seq": 3}):
        async with setup(1, stored=stored) as (_, broadcast, (follower,)):
            in_step(broadcast, [follower], 3)
            broadcast.push(task("SUCCESS", last_seq=3))
            await settle()
            assert not follower.finished
            assert follower.sub.take() == [RESYNC]
            # A task still running (the message was forged, or a retry began): once its
            # stream has read Postgres, the follower joins again; a finished one, never.
            assert broadcast.join(follower) == (stored["state"] == "STARTED")


async def test_statuses_are_sent_once_and_without_postgres_a_finished_task_is_read_by_each() -> (
    None
):
    async with setup(1) as (_, broadcast, (follower,)):
        follower.chunked = False  # HTTP/1.0: the bare event stream
        broadcast.push(task(progress=0.5))
        broadcast.push(lines(1, 1))
        follower.last_seq = 1
        assert not broadcast.join(follower)  # its status differs
        follower.status = broadcast.status
        assert broadcast.join(follower)
        broadcast.push(task(progress=0.5))  # no change: nothing sent
        broadcast.push(task(progress=0.7))
        await settle()
        assert follower.body().count(b'"type":"status"') == 1
        broadcast.push(task("SUCCESS", last_seq=1))
        await settle()
        assert follower.sub.take() == [RESYNC]
        follower.sub.take()
        assert not broadcast.join(follower)  # a finished task has nothing more to broadcast


async def test_redis_news_of_more_lines_or_a_resync_send_members_back() -> None:
    async with setup(1) as (_, broadcast, (follower,)):
        in_step(broadcast, [follower], 2)
        broadcast.push(task(last_seq=5))  # 3-5 stored but not published
        assert follower.sub.take() == [RESYNC]
        follower.last_seq = 5  # read from Postgres
        follower.status = broadcast.status
        assert broadcast.join(follower)
        broadcast.push(RESYNC)
        assert follower.sub.take() == [RESYNC]
        assert follower not in broadcast
