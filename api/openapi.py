"""The OpenAPI 3.1 document (``/tasklog/api/openapi.json``), generated from `api.models`.

`OPERATIONS` names each route of the API with its parameters and the model of each answer;
the schemas come from pydantic (``model_json_schema`` with ``#/components/schemas/`` refs), so
the document says what the routes send. HTML pages are not part of it. A new route adds its
row here (see `api.models` for the whole recipe); tests/unit/test_openapi_document.py fails
while a route of the router under ``/api/``, ``/sse/``, ``/healthz`` or ``/metrics`` has none.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field, TypeAdapter
from pydantic.json_schema import (
    GenerateJsonSchema,
    JsonSchemaMode,
    JsonSchemaValue,
    models_json_schema,
)

from api import auth, keys, models, params, routes, search
from api.lookups import MAX_PATTERN
from tasklog.core import __version__
from tasklog.core.constants import MAX_TASK_ID_BYTES

REF = "#/components/schemas/{model}"
JSON = "application/json"


class Schemas(GenerateJsonSchema):
    """pydantic's JSON Schema, without a title on every field: the descriptions say more."""

    def field_title_should_be_set(self, schema: object) -> bool:
        return False


@dataclass(frozen=True)
class Param:
    """A query, path or header parameter: its type (a pydantic-validatable annotation)."""

    name: str
    kind: Any
    description: str
    where: Literal["query", "path", "header"] = "query"
    required: bool = False

    def schema(self) -> JsonSchemaValue:
        return TypeAdapter(self.kind).json_schema(schema_generator=Schemas)


@dataclass(frozen=True)
class Text:
    """An answer that is not one of the models: plain text, or this document."""

    media_type: str
    description: str
    kind: Literal["string", "object"] = "string"


@dataclass(frozen=True)
class Events:
    """An SSE stream: each event's ``data:`` is one JSON object of `adapter`'s union."""

    adapter: TypeAdapter[Any]
    description: str


@dataclass(frozen=True)
class Failure:
    """An `api.models.Error` answer: what it means for this route."""

    description: str
    retry_after: bool = False


Answer = type[BaseModel] | Text | Events | Failure


@dataclass(frozen=True)
class Operation:
    method: Literal["get", "post"]
    path: str  # below the prefix
    summary: str
    responses: dict[int, Answer]
    parameters: tuple[Param, ...] = ()
    body: type[BaseModel] | None = None
    public: bool = False


TASK_ID = Param(
    "task_id",
    # A character is one to four bytes: the bytes limit bounds the characters too.
    Annotated[str, Field(min_length=1, max_length=MAX_TASK_ID_BYTES)],
    f"Celery task id: at most {MAX_TASK_ID_BYTES} bytes of UTF-8, no control characters",
    where="path",
)
ROOT_ID = Param(
    "root_id",
    Annotated[str, Field(min_length=1, max_length=MAX_TASK_ID_BYTES)],
    f"Id of the workflow's first task (every task's `root_id`): at most {MAX_TASK_ID_BYTES}"
    " bytes of UTF-8, no control characters",
    where="path",
)
AFTER_SEQ = Param(
    "after_seq",
    Annotated[int, Field(ge=0, le=params.MAX_SEQ)],
    "Only lines after this seq (the last one seen)",
)
LAST_EVENT_ID = Param(
    "Last-Event-ID",
    Annotated[int, Field(ge=0, le=params.MAX_SEQ)],
    "Sent by a browser resuming the stream: the seq of the last line it got; wins over `after_seq`",
    where="header",
)
TEXT = Annotated[str, Field(max_length=params.MAX_TEXT)]

#: Statuses most routes share; route-specific ones are added per operation.
BAD = {400: Failure("Bad input: `error` names the parameter and what it expects")}
STORE = {503: Failure("Postgres is unreachable, or the schema is missing (`tasklog migrate`)")}
#: A stream beyond TASKLOG_API_MAX_STREAMS is refused before it starts (`api.slots`).
FULL = "this process serves TASKLOG_API_MAX_STREAMS streams already: retry after `Retry-After`"
STREAM = {503: Failure(FULL[0].upper() + FULL[1:], retry_after=True)}
STREAM_STORE = {
    503: Failure(f"Postgres is unreachable or the schema is missing; or {FULL}", retry_after=True)
}
#: What the middlewares answer on any route (`api.auth`): the generator adds them.
NO_TOKEN = Failure("TASKLOG_API_TOKEN is set and the request carries no valid token")
FOREIGN_HOST = Failure(
    "No TASKLOG_API_TOKEN is set and the Host is not a loopback name (DNS rebinding guard)"
)
NO_TASK = {404: Failure("No task with this id is stored")}

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "get",
        "/api/tasks/",
        "Recent tasks, newest first, a page at a time (follow `next`)",
        {200: models.TaskList, **BAD, **STORE},
        (
            Param(
                "state",
                list[models.StateFilter],
                "Only tasks in these states (comma-separated; known ones in any case)",
            ),
            Param("name", TEXT, "Only tasks of this name"),
            Param("host", TEXT, "Only tasks run on this host"),
            Param("since", models.Timestamp, "Only tasks created at or after this time"),
            Param(
                "limit",
                Annotated[int, Field(ge=1, le=routes.TASKS_MAX)],
                f"Page size (default {routes.TASKS_DEFAULT})",
            ),
            Param("cursor", str, "Where the page starts: from a `next` link, as it is"),
        ),
    ),
    Operation(
        "get",
        "/api/tasks/{task_id}/",
        "One task, with its lines after `after_seq` (follow `next` for more)",
        {200: models.TaskDetail, **NO_TASK, **BAD, **STORE},
        (
            TASK_ID,
            AFTER_SEQ,
            Param(
                "limit",
                Annotated[int, Field(ge=1, le=routes.LINES_MAX)],
                f"Lines per page (default {routes.LINES_DEFAULT})",
            ),
        ),
    ),
    Operation(
        "get",
        "/api/tasks/{task_id}/raw",
        "The task's whole log as text, one line per line: `<timestamp> [<level or stream>]"
        " <message>`",
        {
            200: Text("text/plain", "The whole log, as a download"),
            **NO_TASK,
            **BAD,
            **STORE,
        },
        (TASK_ID,),
    ),
    Operation(
        "get",
        "/api/search/",
        "Stored lines matching a text (or a regex), newest first, a page at a time",
        {200: models.SearchResults, **BAD, **STORE},
        (
            Param(
                "q",
                Annotated[str, Field(min_length=1, max_length=MAX_PATTERN)],
                "The text to find (any case), or with `regex` a POSIX regular expression",
                required=True,
            ),
            Param("regex", bool, "Whether `q` is a regular expression (1, true, yes, on)"),
            Param(
                "state",
                list[models.StateFilter],
                "Only lines of tasks in these states (comma-separated; known ones in any case)",
            ),
            Param("name", TEXT, "Only lines of tasks of this name"),
            Param("host", TEXT, "Only lines of tasks run on this host"),
            Param("stream", list[models.StreamName], "Only lines of these streams"),
            Param("since", models.Timestamp, "Only lines printed at or after this time"),
            Param("until", models.Timestamp, "Only lines printed before this time"),
            Param(
                "limit",
                Annotated[int, Field(ge=1, le=search.SEARCH_MAX)],
                f"Page size (default {search.SEARCH_DEFAULT})",
            ),
            Param("cursor", str, "Where the page starts: from a `next` link, as it is"),
        ),
    ),
    Operation(
        "get",
        "/api/workflows/{root_id}/",
        "Every task of a workflow (chain, group, chord members), oldest first",
        {
            200: models.Workflow,
            404: Failure("No task of this workflow is stored"),
            **BAD,
            **STORE,
        },
        (ROOT_ID,),
    ),
    Operation(
        "post",
        "/api/launch/",
        "Send a demo task to the broker (when TASKLOG_API_DEMO_LAUNCH and a broker are set)",
        {
            202: models.Launched,
            403: Failure("Sent from another site's page (Origin/Referer is not this site)"),
            404: Failure("Launching is off (TASKLOG_API_DEMO_LAUNCH, or no TASKLOG_REDIS_URL)"),
            **BAD,
            503: Failure("The broker refused the task or did not answer"),
        },
        body=models.LaunchRequest,
    ),
    Operation(
        "get",
        "/api/diagnostic/",
        "What the diagnostic page shows: health, collectors, this process, versions, settings",
        {200: models.Diagnostic},
    ),
    Operation(
        "get",
        "/api/openapi.json",
        "This document",
        {200: Text(JSON, "The OpenAPI 3.1 document of the API", "object")},
    ),
    Operation(
        "get",
        "/sse/task/{task_id}/",
        "Follow a task: its stored lines after `after_seq`, then live ones, then `end`",
        {
            200: Events(
                models.task_stream_events,
                "Server-sent events: `connected`, `new_log` (its `id:` is the seq), `status`,"
                " and `end` once the task finished and every line was sent",
            ),
            **BAD,
            **STREAM_STORE,
        },
        (TASK_ID, AFTER_SEQ, LAST_EVENT_ID),
    ),
    Operation(
        "get",
        "/sse/workflow/{root_id}/",
        "Follow a workflow: every line of all its tasks, merged, each tagged with its task;"
        " never ends",
        {
            200: Events(
                models.workflow_stream_events,
                "Server-sent events: `connected`, `new_log` (tagged with `task_id`; the event's"
                " `id:` is a cursor of every task's last seq), `status` for each task",
            ),
            **BAD,
            **STREAM_STORE,
        },
        (
            ROOT_ID,
            Param("after", str, "A cursor (an event's `id:`): resume after it"),
            Param(
                "Last-Event-ID",
                str,
                "Sent by a browser resuming the stream: the last event's `id:`; wins over `after`",
                where="header",
            ),
        ),
    ),
    Operation(
        "get",
        "/sse/tasks/",
        "Follow every task's changes (for the task list); never ends",
        {
            200: Events(models.tasks_stream_events, "Server-sent events: `connected`, `status`"),
            **BAD,
            **STREAM_STORE,
        },
        (Param("since", models.Timestamp, "Send the changes since this time first"),),
    ),
    Operation(
        "get",
        "/sse/test/",
        "A test stream: a counter, then `end`",
        {
            200: Events(models.test_stream_events, "Server-sent events: `connected`, `test`"),
            **BAD,
            **STREAM,
        },
        (
            Param("count", Annotated[int, Field(ge=1, le=1000)], "Events to send (default 10)"),
            Param(
                "interval_ms",
                Annotated[int, Field(ge=10, le=60_000)],
                "Milliseconds between events (default 1000)",
            ),
        ),
    ),
    Operation(
        "get",
        "/healthz",
        "Liveness, and whether Postgres and Redis answer (no token needed; details with it)",
        {200: models.Health, 503: models.Health},
        public=True,
    ),
    Operation(
        "get",
        "/metrics",
        "Prometheus metrics of this process",
        {200: Text("text/plain", "Prometheus text exposition format")},
    ),
)


def _components(operations: tuple[Operation, ...]) -> tuple[dict[str, Any], dict[Events, Any]]:
    """Every model's schema under its name, and each event union's inline schema."""
    answers = {a for op in operations for a in op.responses.values() if isinstance(a, type)}
    answers.add(models.Error)
    bodies = {op.body for op in operations if op.body is not None}
    pairs: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        *((m, "serialization") for m in answers | set(models.EVENTS)),
        *((m, "validation") for m in bodies),  # what a client sends
    ]
    _, top = models_json_schema(
        sorted(pairs, key=lambda p: p[0].__name__), ref_template=REF, schema_generator=Schemas
    )
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    streams: dict[Events, Any] = {}
    for op in operations:
        for answer in op.responses.values():
            if isinstance(answer, Events) and answer not in streams:
                union = answer.adapter.json_schema(
                    ref_template=REF, mode="serialization", schema_generator=Schemas
                )
                for name, schema in union.pop("$defs", {}).items():
                    assert schemas.get(name, schema) == schema, f"two schemas named {name}"
                    schemas[name] = schema
                streams[answer] = union
    return schemas, streams


def _doors(op: Operation) -> dict[int, Answer]:
    """The operation's answers with those of the middlewares every route passes."""
    return {**op.responses, **({} if op.public else {401: NO_TOKEN}), 421: FOREIGN_HOST}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _response(answer: Answer, streams: dict[Events, Any]) -> dict[str, Any]:
    if isinstance(answer, Text):
        return {
            "description": answer.description,
            "content": {answer.media_type: {"schema": {"type": answer.kind}}},
        }
    if isinstance(answer, Failure):
        out: dict[str, Any] = {
            "description": answer.description,
            "content": {JSON: {"schema": _ref(models.Error)}},
        }
        if answer.retry_after:
            out["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before trying again (a full process)",
                    "schema": {"type": "integer", "minimum": 0},
                }
            }
        return out
    if isinstance(answer, Events):
        return {
            "description": answer.description,
            "content": {"text/event-stream": {"schema": streams[answer]}},
        }
    description = (answer.__doc__ or answer.__name__).strip().splitlines()[0]
    return {"description": description, "content": {JSON: {"schema": _ref(answer)}}}


def _parameter(param: Param) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": param.name,
        "in": param.where,
        "description": param.description,
        "required": param.required or param.where == "path",
        "schema": param.schema(),
    }
    if out["schema"].get("type") == "array":
        out["style"], out["explode"] = "form", False  # state=STARTED,FAILURE
    return out


@cache
def document(prefix: str) -> dict[str, Any]:
    """The document of the routes under `prefix` (``/tasklog``)."""
    schemas, streams = _components(OPERATIONS)
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        item: dict[str, Any] = {
            "summary": op.summary,
            "operationId": f"{op.method}_{op.path.strip('/').replace('/', '_')}".replace(
                "{", ""
            ).replace("}", ""),
            "responses": {
                str(status): _response(answer, streams)
                for status, answer in sorted(_doors(op).items())
            },
        }
        if op.parameters:
            item["parameters"] = [_parameter(p) for p in op.parameters]
        if op.body is not None:
            item["requestBody"] = {"required": True, "content": {JSON: {"schema": _ref(op.body)}}}
        if op.public:
            item["security"] = []
        paths.setdefault(prefix + op.path, {})[op.method] = item
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "celery-tasklog",
            "version": __version__,
            "description": "Per-task stdout/stderr of Celery tasks, stored in Postgres and"
            " streamed live. Every error is `{error, status}` JSON, but for a request line"
            " longer than 8190 bytes, which the HTTP server itself refuses with a plain-text 400.",
        },
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "TASKLOG_API_TOKEN"},
                "session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": auth.COOKIE,
                    "description": "Set by the login page",
                },
            },
        },
        # Either one; neither is needed when the API runs without TASKLOG_API_TOKEN.
        "security": [{"bearer": []}, {"session": []}],
        "paths": paths,
    }


async def serve(request: web.Request) -> web.Response:
    """``GET /tasklog/api/openapi.json``."""
    return web.json_response(document(request.app[keys.PAGES].prefix))
