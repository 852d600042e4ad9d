"""`api.sse.frame` frames an event byte for byte as aiohttp-sse's own `send` does."""

from __future__ import annotations

import asyncio

from aiohttp_sse import EventSourceResponse
from hypothesis import given
from hypothesis import strategies as st

from api import wire
from api.sse import frame, line_frames


class _Captured(EventSourceResponse):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []

    async def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written.append(bytes(data))


def _sent(data: str, id: int) -> bytes:
    response = _Captured()
    asyncio.run(response.send(data, id=str(id)))
    return b"".join(response.written)


@given(st.text(), st.integers(min_value=0, max_value=2**63))
def test_frame_is_what_send_writes(data: str, id: int) -> None:
    assert frame(data, id) == _sent(data, id)


def test_line_frames_are_built_once_and_shared() -> None:
    message = {
        "task_id": "t",
        "lines": [
            {"seq": 7, "ts": "2024-01-01T00:00:00+00:00", "stream": "stdout", "message": "a\r\nb"},
        ],
    }
    first = line_frames(message, "t")
    assert line_frames(message, "t") is first
    seq, data = first[0]
    assert seq == 7
    assert data == _sent(wire.dumps(wire.published_line(message["lines"][0], "t")), 7)  # type: ignore[index]
