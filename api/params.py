"""Validation of what a client sends: every bad value becomes a 4xx JSON error."""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, datetime
from typing import NoReturn

from aiohttp import web

from api.lookups import sane_time
from api.models import Error
from tasklog.core.constants import (
    MAX_TASK_ID_BYTES,
    STATE_CHARS,
    STATES,
    state_name,
    task_id_problem,
)

MAX_TEXT = 255
MAX_SEQ = 2**63 - 1
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def error(
    status: type[web.HTTPError], message: str, headers: dict[str, str] | None = None
) -> NoReturn:
    """Raise an HTTP error whose body is `api.models.Error`: ``{"error": message, "status"}``."""
    body = Error(error=message, status=status.status_code).model_dump_json()
    raise status(text=body, content_type="application/json", headers=headers)


def bad(message: str) -> NoReturn:
    error(web.HTTPBadRequest, message)


def printable(value: str) -> bool:
    """No control character (NUL cannot even be stored) and valid Unicode (no lone
    surrogate, which a percent-encoded or JSON-escaped value may hold)."""
    if _CONTROL.search(value):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def task_id(request: web.Request) -> str:
    """The task id of the path: any id the spool stores (`task_id_problem`), if printable."""
    value = request.match_info["task_id"]
    problem = task_id_problem(value)
    if problem is not None or _CONTROL.search(value):
        bad(
            f"task_id: the id {problem or 'holds a control character'}; expected 1 to "
            f"{MAX_TASK_ID_BYTES} bytes of UTF-8 without control characters"
        )
    return value


def integer(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    return _int(raw, name, low, high)


def _int(raw: str, name: str, low: int, high: int) -> int:
    if not re.fullmatch(r"\d{1,19}", raw.strip()):
        bad(f"{name}: expected an integer between {low} and {high} (got {raw[:40]!r})")
    value = int(raw)
    if not low <= value <= high:
        bad(f"{name}: expected an integer between {low} and {high} (got {value})")
    return value


def after_seq(request: web.Request) -> int:
    """Where a stream resumes: the Last-Event-ID header wins over ``?after_seq=``."""
    header = request.headers.get("Last-Event-ID")
    if header:
        return _int(header, "Last-Event-ID", 0, MAX_SEQ)
    return integer(request, "after_seq", 0, 0, MAX_SEQ)


def text(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    if value is None or value == "":
        return None
    if len(value) > MAX_TEXT or not printable(value):
        bad(f"{name}: expected at most {MAX_TEXT} printable characters")
    return value


def states(request: web.Request) -> list[str]:
    found: list[str] = []
    for raw in request.query.getall("state", []):
        for item in raw.split(","):
            if not item.strip():
                continue
            state = state_name(item)
            if state is None:
                bad(
                    f"state: expected one of {', '.join(STATES)} (any case), or a custom state"
                    f" of at most {STATE_CHARS} printable characters (got {item[:40]!r})"
                )
            found.append(state)
    return found


def timestamp(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = datetime.fromisoformat(raw.strip().replace(" ", "+"))
    except ValueError:
        bad(f"{name}: expected an ISO 8601 time such as 2024-05-01T12:00:00Z (got {raw[:40]!r})")
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    if not sane_time(value):
        bad(f"{name}: expected a time between 1970 and 2999 (got {raw[:40]!r})")
    return value


def encode_cursor(created_at: datetime, task_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), task_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def cursor(request: web.Request) -> tuple[datetime, str] | None:
    raw = request.query.get("cursor")
    if not raw:
        return None
    try:
        decoded = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        created, tid = json.loads(decoded)
        if not printable(created):
            raise ValueError(raw)
        value = datetime.fromisoformat(created)
        if task_id_problem(tid) is not None or not sane_time(value):
            raise ValueError(raw)
    except (ValueError, TypeError, binascii.Error):
        bad("cursor: not a cursor this API handed out (use the `next` link as it is)")
    return value, tid
