"""The messages of the live path, as the collector publishes them and the API reads them.

Two kinds, each one JSON object (channel names: `tasklog.core.constants`):

- on ``tasklog:lines:<task id>``, `LinesMessage`: lines just stored for one task, in seq order;
- on ``tasklog:tasks``, `TaskMessage`: a task's row after a commit that changed it, with the
  ``last_seq`` a reader compares with what it was sent (the columns of the collector's
  ``changed_tasks`` query; ``state`` is called ``status``, as in the API).

`encode` is the collector's (orjson: a batch's lines are published as they are stored);
`decode_lines` and `decode_task` are the readers', and give None for anything else, so a stray
publish on a tasklog channel never reaches a browser: every field is checked (type, range,
size) before the message is used, one bad line making the whole message another shape.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import TypedDict, TypeGuard

import orjson

from tasklog.core.constants import ALL_STATES, STREAMS, task_id_problem


class LineMessage(TypedDict):
    """One stored line."""

    seq: int
    #: ISO 8601 with microseconds, UTC.
    ts: str
    stream: str
    level: str | None
    message: str


class LinesMessage(TypedDict):
    task_id: str
    lines: list[LineMessage]


class TaskMessage(TypedDict):
    task_id: str
    task_name: str | None
    #: The task's state (`tasklog.core.constants`), named as the API names it.
    status: str
    progress: float | None
    progress_message: str | None
    host: str | None
    #: ISO 8601 times.
    started_at: str | None
    completed_at: str | None
    runtime: float | None
    line_count: int
    #: The highest seq stored for the task: a reader that was sent less reads the rest.
    last_seq: int
    exc_type: str | None
    exc_message: str | None
    #: The task that sent this one, and the first task of its workflow (Celery's ids).
    parent_id: str | None
    root_id: str | None


def lines_message(task_id: str, lines: list[LineMessage]) -> LinesMessage:
    return {"task_id": task_id, "lines": lines}


def _default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def encode(message: LinesMessage | TaskMessage | dict[str, object]) -> bytes:
    """A message as published; a task row straight from Postgres (datetimes) is welcome."""
    try:
        return orjson.dumps(message, default=_default)
    except orjson.JSONEncodeError:  # what orjson refuses (an int past 64 bits…), json may not
        text = json.dumps(message, default=_default, ensure_ascii=False, separators=(",", ":"))
        return text.encode("utf-8")


def _object(data: bytes | str) -> dict[str, object] | None:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


#: Text fields are bounded as the collector bounds them: a longer one is not its message.
_MAX_TEXT = 1 << 21
_MAX_SHORT = 4096
_MAX_SEQ = (1 << 63) - 1
_STREAM_NAMES = frozenset(STREAMS)


def _text(value: object, limit: int = _MAX_TEXT) -> bool:
    return type(value) is str and len(value) <= limit


def _optional_text(value: object, limit: int = _MAX_SHORT) -> bool:
    return value is None or _text(value, limit)


def _count(value: object) -> bool:
    return type(value) is int and 0 <= value <= _MAX_SEQ


def _optional_count(value: object) -> bool:
    return value is None or _count(value)


def _number(value: object, low: float, high: float) -> bool:
    return (
        type(value) in (int, float) and math.isfinite(value) and low <= value <= high  # type: ignore[arg-type, operator]
    )


def _is_line(value: object) -> bool:
    return (
        type(value) is dict
        and type(value.get("seq")) is int
        and 1 <= value["seq"] <= _MAX_SEQ
        and _text(value.get("ts"), 64)
        and value.get("stream") in _STREAM_NAMES
        and _optional_text(value.get("level"), 256)
        and _text(value.get("message"))
    )


def _is_lines(value: dict[str, object]) -> TypeGuard[LinesMessage]:
    """Every field checked: one bad line makes the whole message another shape."""
    lines = value.get("lines")
    return (
        task_id_problem(value.get("task_id")) is None
        and type(lines) is list
        and all(_is_line(line) for line in lines)
    )


def _is_task(value: dict[str, object]) -> TypeGuard[TaskMessage]:
    """Every field the readers use checked, each optional one absent, null or of its type."""
    return (
        task_id_problem(value.get("task_id")) is None
        and value.get("status") in ALL_STATES
        and all(
            _optional_text(value.get(key))
            for key in ("task_name", "host", "started_at", "completed_at", "exc_type")
        )
        and all(
            value.get(key) is None or task_id_problem(value.get(key)) is None
            for key in ("parent_id", "root_id")
        )
        and _optional_text(value.get("progress_message"), _MAX_TEXT)
        and _optional_text(value.get("exc_message"), _MAX_TEXT)
        and (value.get("progress") is None or _number(value.get("progress"), 0, 100))
        and (value.get("runtime") is None or _number(value.get("runtime"), 0, 1e15))
        and all(
            value.get(key) is None or _count(value.get(key)) for key in ("line_count", "last_seq")
        )
    )


def is_lines(message: LinesMessage | TaskMessage) -> TypeGuard[LinesMessage]:
    """Whether a decoded message is a lines message (else it is a task message)."""
    return "lines" in message


def decode_lines(data: bytes | str) -> LinesMessage | None:
    """A lines message, or None when `data` is not one."""
    value = _object(data)
    return value if value is not None and _is_lines(value) else None


def decode_task(data: bytes | str) -> TaskMessage | None:
    """A task message, or None when `data` is not one."""
    value = _object(data)
    return value if value is not None and _is_task(value) else None
