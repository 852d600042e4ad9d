"""The OpenAPI document generated from `api.models`: complete, closed, described, and equal to
what the SSE hot path (`api.wire`, which does not go through the models) sends."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from api import openapi, wire
from api.app import create_app
from api.models import NewLog, StatusEvent, Task
from api.queries import TASK_COLUMNS
from api.settings import ApiSettings
from tasklog.core.constants import ALL_STATES, FINISHED_STATES, STATE_CHARS, STREAMS
from tasklog.core.messages import LineMessage

PREFIX = "/tasklog"
#: Routes the document must describe: everything else the router serves is an HTML page.
API_ROOTS = tuple(PREFIX + root for root in ("/api/", "/sse/", "/healthz", "/metrics"))
DOC = openapi.document(PREFIX)
SCHEMAS: dict[str, Any] = DOC["components"]["schemas"]


def test_every_api_route_of_the_router_is_documented_and_nothing_else() -> None:
    settings = ApiSettings(_env_file=None, database_url="postgresql://unused/db")
    app = create_app(settings)
    served, pages = set(), []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = str(info.get("path") or info.get("formatter") or info.get("prefix"))
        if route.method == "HEAD":
            continue
        if path.startswith(API_ROOTS):
            served.add((route.method.lower(), path))
        else:
            pages.append((route.method, path, getattr(route.handler, "__module__", "")))
    documented = {(method, path) for path, item in DOC["paths"].items() for method in item}
    assert served - documented == set(), "routes missing from api.openapi.OPERATIONS"
    assert documented - served == set(), "documented routes the router does not serve"
    # The rest are pages (api.views), static files, or the redirect to the prefix.
    for method, path, module in pages:
        assert module in ("api.views", "api.app") or path == PREFIX + "/static", (method, path)


def test_the_state_enum_comes_from_the_constants() -> None:
    status = SCHEMAS["Task"]["properties"]["status"]
    known = next(option["enum"] for option in status["anyOf"] if "enum" in option)
    assert set(known) == ALL_STATES  # IGNORED, REJECTED... as soon as the constants have them
    (list_op,) = [op["get"] for path, op in DOC["paths"].items() if path.endswith("/api/tasks/")]
    (state,) = [p for p in list_op["parameters"] if p["name"] == "state"]
    options = state["schema"]["items"]["anyOf"]
    assert set(next(option["enum"] for option in options if "enum" in option)) == ALL_STATES
    # and a custom state, as a task set it with update_state (what the store holds at most)
    assert {"type": "string", "minLength": 1, "maxLength": STATE_CHARS} in options


def test_every_operation_documents_what_the_middlewares_answer() -> None:
    for path, item in DOC["paths"].items():
        for method, op in item.items():
            answers = op["responses"]
            assert "421" in answers, (method, path)  # a foreign Host without a token
            assert ("401" in answers) is (op.get("security") != []), (method, path)
            if "/sse/" in path:  # a full process refuses a stream with Retry-After
                assert "Retry-After" in answers["503"]["headers"], path


def _objects(schema: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
    """Every object schema inside `schema`, with where it is."""
    found = []
    if isinstance(schema, dict):
        if schema.get("type") == "object" and "properties" in schema:
            found.append((where, schema))
        for key, value in schema.items():
            found += _objects(value, f"{where}.{key}")
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            found += _objects(value, f"{where}[{i}]")
    return found


def test_every_object_is_closed_and_every_field_described() -> None:
    objects = _objects(DOC, "doc")
    assert len(objects) >= 15
    for where, schema in objects:
        assert schema.get("additionalProperties") is False, where
        assert schema.get("description"), where
        for name, prop in schema["properties"].items():
            assert prop.get("description"), f"{where}.{name} has no description"
    for path, item in DOC["paths"].items():
        for method, op in item.items():
            assert op["summary"] and op["responses"], (method, path)
            for param in op.get("parameters", []):
                assert param["description"], (method, path, param["name"])


def test_every_task_column_is_a_documented_field() -> None:
    wire_names = {"status" if c == "state" else c for c in TASK_COLUMNS} | {"finished"}
    assert set(SCHEMAS["Task"]["properties"]) == wire_names
    assert set(SCHEMAS["Task"]["required"]) == wire_names
    # A status event read from Postgres carries the same fields.
    assert set(SCHEMAS["StatusEvent"]["properties"]) == wire_names | {"type"}


def _row(state: str, **extra: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    row: dict[str, Any] = dict.fromkeys(TASK_COLUMNS)
    row.update(
        task_id="t1",
        state=state,
        retries=0,
        created_at=now,
        started_at=now,
        line_count=3,
        last_seq=3,
        lines_omitted=0,
        spool_errors=0,
        **extra,
    )
    return row


@pytest.mark.parametrize("state", [*sorted(ALL_STATES), "MY_CUSTOM_STATE"])
def test_a_status_event_read_from_postgres_is_a_status_event_of_the_document(state: str) -> None:
    event = wire.status_event(wire.task_json(_row(state, completed_at=datetime.now(UTC))))
    checked = StatusEvent.model_validate_json(wire.dumps(event), strict=True)
    assert checked.model_dump(mode="json", exclude_unset=True) == event
    assert event["finished"] is (state in FINISHED_STATES)
    # and the task list's model says the same of the same row
    assert Task.from_row(_row(state)).finished is event["finished"]


def test_a_status_event_relayed_from_the_collector_is_a_status_event_of_the_document() -> None:
    # The collector's message (collector/sql/queries.sql, changed_tasks), as Redis delivers it.
    message = json.loads(
        '{"task_id": "t1", "task_name": "demo.x", "status": "PROGRESS", "progress": 42.5,'
        ' "progress_message": "step 3", "host": "h", "started_at": "2024-05-01T12:00:00+00:00",'
        ' "completed_at": null, "runtime": null, "line_count": 7, "last_seq": 7,'
        ' "exc_type": null, "exc_message": null}'
    )
    event = wire.status_event(message)
    StatusEvent.model_validate_json(wire.dumps(event), strict=True)
    pending = {"task_id": "t", "status": "PENDING", "progress": None, "progress_message": None}
    StatusEvent.model_validate_json(wire.dumps(wire.status_event(pending)), strict=True)


lines = st.fixed_dictionaries(
    {
        "seq": st.integers(1, 2**63 - 1),
        "ts": st.datetimes(
            min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
        ),
        "stream": st.sampled_from(STREAMS),
        "level": st.none() | st.sampled_from(["INFO", "WARNING"]),
        "message": st.text(),
    }
)


@given(lines)
def test_a_new_log_event_equals_its_model(row: dict[str, Any]) -> None:
    # Replayed from Postgres: psycopg gives a datetime.
    event = wire.line_json(row, "t1")
    assert NewLog.model_validate(event).model_dump(mode="json") == event
    # Relayed live: the collector publishes the time as text with microseconds.
    live = {**row, "ts": row["ts"].isoformat(timespec="microseconds")}
    relayed = wire.published_line(cast(LineMessage, live), "t1")
    checked = NewLog.model_validate_json(wire.dumps(relayed), strict=True)
    assert checked.timestamp == row["ts"]
    assert {k: v for k, v in checked.model_dump(mode="json").items() if k != "timestamp"} == {
        k: v for k, v in relayed.items() if k != "timestamp"
    }


def test_a_field_the_model_does_not_know_is_refused() -> None:
    event = wire.line_json(
        {"seq": 1, "ts": datetime.now(UTC), "stream": "stdout", "level": None, "message": "m"},
        "t1",
    )
    with pytest.raises(ValidationError, match="Extra inputs"):
        NewLog.model_validate({**event, "colour": "red"})
    with pytest.raises(ValidationError):
        Task.from_row({**_row("SUCCESS"), "started_at": datetime.now() - timedelta(1)})
