"""The live path's messages (`tasklog.core.messages`): what the collector encodes, the API
decodes, and nothing else gets through."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from tasklog.core import db, messages
from tasklog.core.messages import LineMessage, TaskMessage

LINE: LineMessage = {
    "seq": 3,
    "ts": "2024-05-01T12:00:00.000001+00:00",
    "stream": "stderr",
    "level": None,
    "message": "tab\there, \u2028 and \x1b[31mred",
}


def test_a_lines_message_comes_back_as_it_was_sent() -> None:
    sent = messages.lines_message("task-1", [LINE])
    assert messages.decode_lines(messages.encode(sent)) == sent
    assert messages.decode_task(messages.encode(sent)) is None


def test_a_task_row_from_postgres_is_published_with_iso_times() -> None:
    started = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    row = {"task_id": "t", "status": "SUCCESS", "started_at": started, "last_seq": 2}
    decoded = messages.decode_task(messages.encode(row))
    assert decoded is not None
    assert decoded["started_at"] == started.isoformat()
    huge = {**row, "last_seq": 2**70}
    assert json.loads(messages.encode(huge))["last_seq"] == 2**70  # json takes over from orjson
    assert messages.decode_task(messages.encode(huge)) is None  # past bigint: not a row


def test_anything_else_is_refused() -> None:
    task: TaskMessage = {
        "task_id": "t",
        "parent_id": None,
        "root_id": None,
        "task_name": None,
        "status": "STARTED",
        "progress": None,
        "progress_message": None,
        "host": None,
        "started_at": None,
        "completed_at": None,
        "runtime": None,
        "line_count": 0,
        "last_seq": 0,
        "exc_type": None,
        "exc_message": None,
    }
    assert messages.decode_task(messages.encode(task)) == task
    for data in (b"", b"not json", b"[1, 2]", b'{"task_id": 1, "lines": []}', b'{"lines": []}'):
        assert messages.decode_lines(data) is None
        assert messages.decode_task(data) is None


def test_the_task_message_is_what_the_collector_selects() -> None:
    """`TaskMessage` describes the row the collector publishes (``changed_tasks``)."""
    query = db.queries("collector.sql", "store.sql")["changed_tasks"]
    selected = query.split("SELECT", 1)[1].split("FROM", 1)[0]
    columns = [c.split(" AS ")[-1].strip() for c in selected.split(",")]
    assert columns == list(TaskMessage.__annotations__)
