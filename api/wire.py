"""The JSON the API speaks, compatible with the guide's original implementation.

A task carries ``task_id``, ``task_name``, ``status`` (a Celery state name), ``started_at``,
``completed_at`` (ISO 8601) and ``progress`` (0-100 or null), as the collector's messages on
the tasks channel do; a line is ``{"id": seq, "timestamp", "stream", "message"}``; each SSE
``data:`` is one object with a ``type``: ``connected``, ``new_log``, ``status``, ``end``.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from tasklog.core.constants import FINISHED_STATES

Json = dict[str, Any]

CONNECTED = "connected"
NEW_LOG = "new_log"
STATUS = "status"
END = "end"

#: What decides whether a status event is news for a stream.
STATUS_KEYS = ("status", "progress", "progress_message")


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def task_json(row: dict[str, Any]) -> Json:
    """A `tasks` row as the API shows it (``state`` is called ``status`` on the wire)."""
    out = {key: _iso(value) for key, value in row.items() if key != "state"}
    out["status"] = row["state"]
    out["finished"] = row["state"] in FINISHED_STATES
    return out


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


def published_line(line: dict[str, Any], task_id: str) -> Json:
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


def status_event(task: Json) -> Json:
    return {"type": STATUS, **task, "finished": task.get("status") in FINISHED_STATES}


def dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)
