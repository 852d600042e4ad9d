"""SSE events as bytes, framed as aiohttp-sse's `send` frames them, for writes of many events.

A live line is framed once for every follower of its task (`line_frames`), and a follower's
or a broadcast's write joins the frames of a whole batch: aiohttp-sse has no batch API, so
`frame` reproduces `send`'s framing (tests/unit/test_sse_frame.py checks it byte for byte).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

from aiohttp_sse import EventSourceResponse

from api import wire
from tasklog.core.messages import LinesMessage


def frame(data: str, id: int | str | None = None) -> bytes:
    """One event as `EventSourceResponse.send` frames it (default separator), for batching;
    `id` is a seq, or a stream's own cursor (the workflow stream's)."""
    split = EventSourceResponse.LINE_SEP_EXPR.split
    chunks = "".join(f"data: {chunk}\r\n" for chunk in split(data))
    head = "" if id is None else f"id: {id}\r\n"
    return f"{head}{chunks}\r\n".encode()


class _Framed(LinesMessage, total=False):
    """A lines message with its frames kept on it (never published)."""

    _sse_frames: list[tuple[int, bytes]]


def line_frames(message: LinesMessage, task_id: str) -> list[tuple[int, bytes]]:
    """A live lines message's events as ``(seq, frame)``, built once for every follower.

    The hub hands the same parsed message to each subscription of the task, so the first
    follower to see it leaves the frames on it for the others.
    """
    framed = cast(_Framed, message)
    frames = framed.get("_sse_frames")
    if frames is None:
        frames = framed["_sse_frames"] = [
            (line["seq"], frame(wire.dumps(wire.published_line(line, task_id)), line["seq"]))
            for line in message["lines"]
        ]
    return frames


def status_key(task: Mapping[str, object]) -> tuple[object, ...]:
    """What decides whether a task message's status event is news for a stream."""
    return tuple(map(task.get, wire.STATUS_KEYS))


def status_frame(task: Mapping[str, object]) -> bytes:
    return frame(wire.dumps(wire.status_event(task)))
