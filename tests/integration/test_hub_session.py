"""The API hub's Redis session (`api.redislink`) against a real Redis: a follower that holds its
task's channel while the session is still subscribing what it starts with (a browser that
reconnects as an API process starts) gets its channel held and its task's messages.

Pub/sub channels are server-wide whatever the database number: this test subscribes the tasks
channel, as every API does, but publishes only on a task channel whose name is its own, and
looks only at what comes on that one.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from api.redislink import Session
from tasklog.core import live
from tasklog.core.constants import lines_channel

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Listener:
    """The hub's side of a session (`api.redislink.Listener`), recording what it is told."""

    ping_every = 5.0

    def __init__(self, channel: str) -> None:
        self.live = False
        self.went_live_event = asyncio.Event()
        self._channel = channel.encode()
        #: What came on `channel` (others may publish on the tasks channel meanwhile).
        self.messages: list[bytes] = []
        self.arrived = asyncio.Event()

    def followed(self) -> list[str]:
        return []  # nothing yet when the session starts: the follower comes meanwhile

    def dispatch(self, channel: bytes, data: bytes) -> None:
        if channel == self._channel:
            self.messages.append(data)
            self.arrived.set()

    def confirmed(self, task_id: str) -> None:
        pass

    def went_live(self) -> None:
        self.live = True
        self.went_live_event.set()


# Without the fix the two connections race, and this fails in about 4 attempts of 5.
@pytest.mark.parametrize("attempt", range(5))
async def test_a_channel_held_while_the_session_starts_holds_and_gets_its_messages(
    redis_url: str, attempt: int
) -> None:
    channel = lines_channel(f"held-at-start-{uuid.uuid4().hex}")
    listener = Listener(channel)
    client = await live.connect(redis_url, "auto", name="tasklog-test-hub")
    publisher = aioredis.Redis.from_url(redis_url)
    session = Session(listener, client, redis_url, "tasklog-test-hub")
    running = asyncio.create_task(session.run(), name="session")
    try:
        # The session's first SUBSCRIBE and the follower's go out together, each opening the
        # pub/sub's connection if nothing made them take turns.
        assert await session.hold(channel, 5.0), "the follower's channel never held"
        async with asyncio.timeout(5):
            await listener.went_live_event.wait()
        await publisher.publish(channel, b"a line")
        async with asyncio.timeout(5):
            await listener.arrived.wait()
        assert listener.messages == [b"a line"]
    finally:
        running.cancel()
        # Bounded: a session stuck with a connection nobody reads must fail, not hang.
        async with asyncio.timeout(10):
            await asyncio.gather(running, return_exceptions=True)
            await session.aclose()
            await publisher.aclose()
            await client.aclose()
