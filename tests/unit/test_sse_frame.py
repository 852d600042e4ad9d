"""`api.framing.frame` frames an event byte for byte as aiohttp-sse's own `send` does."""

from __future__ import annotations

import asyncio
import inspect

from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp_sse import EventSourceResponse, sse_response
from hypothesis import given
from hypothesis import strategies as st

from api import wire
from api.framing import frame, line_frames
from api.sse import Stream
from tasklog.core.messages import LineMessage, LinesMessage


class _Captured(EventSourceResponse):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []

    async def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written.append(bytes(data))


def _sent(data: str, id: int | None) -> bytes:
    response = _Captured()
    asyncio.run(response.send(data, id=None if id is None else str(id)))
    return b"".join(response.written)


@given(st.text(), st.integers(min_value=0, max_value=2**63))
def test_frame_is_what_send_writes(data: str, id: int) -> None:
    assert frame(data, id) == _sent(data, id)


@given(st.text())
def test_a_frame_without_id_is_what_send_writes(data: str) -> None:
    # Status events go out in the same write as the lines around them, framed so.
    assert frame(data) == _sent(data, None)


def test_line_frames_are_built_once_and_shared() -> None:
    line: LineMessage = {
        "seq": 7,
        "ts": "2024-01-01T00:00:00+00:00",
        "stream": "stdout",
        "level": None,
        "message": "a\r\nb",
    }
    message: LinesMessage = {"task_id": "t", "lines": [line]}
    first = line_frames(message, "t")
    assert line_frames(message, "t") is first
    seq, data = first[0]
    assert seq == 7
    assert data == _sent(wire.dumps(wire.published_line(line, "t")), 7)


def test_stream_takes_every_parameter_of_aiohttp_sse() -> None:
    """`Stream` spells out aiohttp-sse's constructor (and uses no private attribute of it):
    when a release changes the constructor, this says so."""
    ours = inspect.signature(Stream.__init__).parameters
    theirs = inspect.signature(EventSourceResponse.__init__).parameters
    assert list(ours) == list(theirs)
    assert {name: p.default for name, p in ours.items()} == {
        name: p.default for name, p in theirs.items()
    }


async def test_a_stalled_client_is_cut_off_after_the_send_timeout() -> None:
    """`Stream.lines` keeps aiohttp-sse's promise: a write that cannot finish within the send
    timeout stops the stream and aborts the connection (a real server, a client that never
    reads)."""
    outcome: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    async def handler(request: web.Request) -> web.StreamResponse:
        async with sse_response(request, response_cls=Stream, send_timeout=0.3) as stream:
            try:
                for _ in range(1000):  # until the socket buffers are full
                    await stream.lines([b"data: " + b"x" * 1_000_000 + b"\r\n\r\n"])
                outcome.set_result(None)
            except TimeoutError as exc:
                outcome.set_result(exc)
        return stream

    app = web.Application()
    app.router.add_get("/", handler)
    async with TestServer(app) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(30):
            assert isinstance(await outcome, TimeoutError)
            # The server aborted the connection: the client reads what was buffered, then EOF.
            while await reader.read(1 << 20):
                pass
        writer.close()
