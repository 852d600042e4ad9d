"""The SSE events as plain dicts, for the hot path, and the pages' view of a task.

The contract is `api.models` (``NewLog``, ``StatusEvent``...); these functions build the same
objects without validating them, because a live line is framed once for every follower and
a relayed collector message passes through as it is. tests/unit/test_openapi_document.py
proves each equals its model; tests/integration/test_contract.py checks real streams against
the document.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from api.models import task_fields
from tasklog.core.constants import FINISHED_STATES
from tasklog.core.messages import LineMessage

Json = dict[str, Any]

CONNECTED = "connected"
NEW_LOG = "new_log"
STATUS = "status"
END = "end"

#: What decides whether a status event is news for a stream.
STATUS_KEYS = ("status", "progress", "progress_message")


def _iso(value: object) -> object:
    return value.isoformat() if isinstance(value, datetime) else value


def task_json(row: dict[str, Any]) -> Json:
    """A `tasks` row as `api.models.Task` shows it, as a dict (pages, status events)."""
    return {key: _iso(value) for key, value in task_fields(row).items()}


def line_json(row: dict[str, Any], task_id: str) -> Json:
    return {
        "type": NEW_LOG,
        "id": row["seq"],
        "task_id": task_id,
        "timestamp": _iso(row["ts"]),
        "stream": row["stream"],
        "level": row["level"],
        "message": row["message"],
    }


def published_line(line: LineMessage, task_id: str) -> Json:
    """A line of a collector message on a lines channel, in the shape of `line_json`."""
    return {
        "type": NEW_LOG,
        "id": line["seq"],
        "task_id": task_id,
        "timestamp": line["ts"],
        "stream": line["stream"],
        "level": line.get("level"),
        "message": line["message"],
    }


def status_event(task: Mapping[str, object]) -> Json:
    return {"type": STATUS, **task, "finished": task.get("status") in FINISHED_STATES}


def dumps(data: object) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)
