"""The API's contract: one pydantic model per JSON answer and per SSE event.

These models are the one source of the wire format. The JSON routes build their answers from
them (``routes.respond(Model(...))``), and `api.openapi` generates the OpenAPI document from
them, so a JSON answer carries a field exactly when it is documented here. The SSE events are
the exception: `api.wire` builds them as dicts, because a live line is framed once for every
follower (the hot path) and a collector's message is relayed as it came; the models document
them, tests/unit/test_openapi_document.py proves each `api.wire` builder equals its model, and
tests/integration/test_contract.py checks real streams against the document.

Every model forbids extra fields (``additionalProperties: false`` in the document): a route
that sends a field nobody documented fails tests/integration/test_contract.py.

A new route (search, workflows, ...):
1. its answer gets a model here (fields typed, each with a ``description``), built on
   `Contract`; reuse `Task`, `Line`, `Timestamp`, `State` rather than re-typing them;
2. the handler returns ``routes.respond(TheModel(...))`` (errors go through `params.error`);
   a stream documents its events as a discriminated union (see `task_stream_events`);
3. `api.openapi.OPERATIONS` gets a row: method, path, summary, parameters, and the model (or
   `Failure` description) of each status (401 and 421, which the middlewares answer on every
   route, are added by the generator); the document and the fuzz test pick it up from there;
4. tests/integration/test_contract.py calls it with real data: it fails while a documented
   route is not called there, and tests/unit/test_openapi_document.py fails while the router
   has an API route the document lacks.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    PlainSerializer,
    TypeAdapter,
    WithJsonSchema,
)

from tasklog.core.constants import FINISHED_STATES, STATE_CHARS, STATES, STREAMS
from tasklog.core.demo_tasks import DEMO_TASKS

#: The task states this version knows, in the order a run goes through them.
KNOWN_STATES: tuple[str, ...] = STATES

if TYPE_CHECKING:  # built at run time from the owners' tuples, which mypy cannot follow
    KnownState = str
    StreamName = str
    DemoTask = str
else:
    KnownState = Literal[KNOWN_STATES]
    StreamName = Literal[STREAMS]
    DemoTask = Literal[tuple(DEMO_TASKS)]

#: A task's state: one of `KNOWN_STATES`, or a custom one a task set with
#: ``update_state(state=...)``, shown as given (an open enum, so clients keep working).
State = Annotated[
    KnownState | str,
    Field(
        description="Celery state name: one of the known states, or a custom state the task set"
        " with `update_state(state=...)`"
    ),
]

#: A state a filter names: a known one in any case, or a custom one as a task set it.
StateFilter = Annotated[
    KnownState | Annotated[str, Field(min_length=1, max_length=STATE_CHARS)],
    Field(
        description="A known state (any case), or a custom state a task set with"
        f" `update_state(state=...)`, as written (at most {STATE_CHARS} characters)"
    ),
]

#: A time as ISO 8601 with its UTC offset, written as Python's `isoformat` writes it (what the
#: API has always sent: ``+00:00``, not pydantic's ``Z``).
Timestamp = Annotated[
    AwareDatetime,
    PlainSerializer(datetime.isoformat, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


class Contract(BaseModel):
    """Base of every model of the contract: unknown fields are an error, never passed on."""

    model_config = ConfigDict(extra="forbid")


# -- tasks and lines -----------------------------------------------------------------------------


class Task(Contract):
    """A task as the list, the detail and the pages show it."""

    task_id: str = Field(description="Celery task id")
    task_name: str | None = Field(description="Registered task name, once the task started")
    status: State
    progress: float | None = Field(
        ge=0, le=100, description="Percent done (0-100) as the task last reported it, or null"
    )
    progress_message: str | None = Field(description="Message the task sent with its progress")
    host: str | None = Field(description="Host name of the worker that ran the task")
    worker: str | None = Field(description="Celery worker node name (`celery@host`)")
    pid: int | None = Field(description="Process id of the worker process that ran the task")
    parent_id: str | None = Field(description="Id of the task that sent this one, if any")
    root_id: str | None = Field(description="Id of the first task of this one's workflow")
    retries: int = Field(ge=0, description="Times the task was retried")
    created_at: Timestamp = Field(description="When the collector first stored the task")
    started_at: Timestamp | None = Field(description="When the task started running")
    completed_at: Timestamp | None = Field(description="When the task finished, if it did")
    runtime: float | None = Field(description="Seconds the task ran, once finished")
    exc_type: str | None = Field(description="Exception class name of a failed task")
    exc_message: str | None = Field(description="Exception message of a failed task")
    line_count: int = Field(ge=0, description="Lines stored, the omission marker included")
    last_seq: int = Field(ge=0, description="Highest line seq handed out to this task")
    lines_omitted: int = Field(
        ge=0, description="Lines dropped by the head+tail bound (TASKLOG_MAX_LINES)"
    )
    spool_errors: int = Field(ge=0, description="Records the worker could not write to its spool")
    finished: bool = Field(
        description="Whether the state is final: every line of the task is stored"
    )

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Self:
        """A `tasks` row (`api.queries.TASK_COLUMNS`): ``state`` is ``status`` on the wire."""
        return cls.model_validate(task_fields(row))


def task_fields(row: dict[str, Any]) -> dict[str, Any]:
    """A `tasks` row's values under their names on the wire, ``finished`` added."""
    out = {key: value for key, value in row.items() if key != "state"}
    out["status"] = row["state"]
    out["finished"] = row["state"] in FINISHED_STATES
    return out


class Line(Contract):
    """One stored line of a task's output."""

    id: int = Field(ge=1, description="The line's seq within its task (1, 2, 3...)")
    timestamp: Timestamp = Field(description="When the task printed the line")
    stream: StreamName = Field(
        description="stdout, stderr, log (a logging record) or marker (the omission marker)"
    )
    level: str | None = Field(description="Log level of a `log` line, else null")
    message: str = Field(description="The line's text, without its newline; may hold ANSI codes")

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Line:
        """A `lines` row (``seq, ts, stream, level, message``)."""
        return cls(
            id=row["seq"],
            timestamp=row["ts"],
            stream=row["stream"],
            level=row["level"],
            message=row["message"],
        )


class TaskList(Contract):
    """A page of tasks, newest first."""

    results: list[Task] = Field(description="Tasks of this page, newest first")
    next: str | None = Field(
        json_schema_extra={"format": "uri"},
        description="Absolute URL of the next page (same filters), or null on the last page",
    )


class Run(Contract):
    """One run of a task: a retried task runs again under the same id, its seqs continuing."""

    run: int = Field(ge=0, description="Celery's `retries` of this run: 0 is the first run")
    first_seq: int = Field(ge=1, description="Seq of the run's first line")
    host: str | None = Field(description="Host name of the worker that ran it")
    worker: str | None = Field(description="Celery worker node name")
    pid: int | None = Field(description="Process id of the worker process")
    state: State
    started_at: Timestamp | None = Field(description="When the run started")
    completed_at: Timestamp | None = Field(description="When the run ended, if it did")
    runtime: float | None = Field(description="Seconds the run took, once ended")
    exc_type: str | None = Field(description="Exception class name, if the run raised")
    exc_message: str | None = Field(description="Exception message, if the run raised")


class TaskDetail(Task):
    """A task with a page of its lines."""

    traceback: str | None = Field(description="Python traceback of a failed task")
    runs: list[Run] = Field(
        description="The task's runs, oldest first (one, unless it was retried); a run that a"
        " later one replaced shows RETRY"
    )
    logs: list[Line] = Field(description="Lines after `after_seq`, in seq order")
    log_count: int = Field(ge=0, description="Lines stored for the task (as `line_count`)")
    next: str | None = Field(
        json_schema_extra={"format": "uri"},
        description="Absolute URL of the next page of lines, or null when this page is the last",
    )


class SearchMatch(Contract):
    """A stored line that matches a search (`tasklog grep --json` prints the same objects)."""

    task_id: str = Field(description="The task that printed the line")
    task_name: str | None = Field(description="Its registered name")
    seq: int = Field(ge=1, description="The line's seq within its task")
    stream: StreamName = Field(description="stdout, stderr, log or marker")
    level: str | None = Field(description="Log level of a `log` line, else null")
    timestamp: Timestamp = Field(description="When the task printed the line")
    message: str = Field(description="The line's text; may hold ANSI codes")
    match: tuple[int, int] | None = Field(
        description="First matched span of `message` in characters, [start, end); null when"
        " it cannot be placed"
    )


class Workflow(Contract):
    """The tasks sharing a root: a chain, group or chord, and whatever its tasks sent."""

    root_id: str = Field(description="Id of the workflow's first task")
    tasks: list[Task] = Field(
        description="Every task of the workflow, oldest first; `parent_id` makes the tree"
    )
    truncated: bool = Field(description="Whether the workflow has more tasks than shown (5,000)")


class SearchResults(Contract):
    """A page of matching lines, newest first."""

    results: list[SearchMatch] = Field(description="Matches of this page, newest first")
    next: str | None = Field(
        json_schema_extra={"format": "uri"},
        description="Absolute URL of the next page (same search), or null on the last page",
    )


# -- errors, launch ------------------------------------------------------------------------------


class Error(Contract):
    """Every 4xx and 5xx answer of the API."""

    error: str = Field(description="What went wrong, in one sentence, for a person")
    status: int = Field(ge=400, le=599, description="The HTTP status, repeated")


class LaunchRequest(Contract):
    """A demo task to send to the broker."""

    task: DemoTask = Field(description="Name of a demo task (see the launch page)")
    kwargs: dict[str, JsonValue] | None = Field(
        None, description="The task's keyword arguments; each demo task accepts its own"
    )


class Launched(Contract):
    """A demo task the broker accepted."""

    task_id: str = Field(description="Id of the task sent")
    task_name: str = Field(description="Name of the task sent")
    url: str = Field(description="Path of the task's live log page")


# -- health and diagnostics ----------------------------------------------------------------------


class PostgresUp(Contract):
    """Postgres answered."""

    ok: Literal[True] = Field(description="Postgres answered")
    version: str = Field(description="Server version")
    schema_version: int | None = Field(
        description="Latest migration applied (`tasklog migrate`), null before the first"
    )


class PostgresDown(Contract):
    """Postgres did not answer within 3 seconds."""

    ok: Literal[False] = Field(description="Postgres did not answer")
    error: str = Field(description="Why")


class RedisHealth(Contract):
    """Redis, which carries live updates (optional: pages poll Postgres without it)."""

    configured: bool = Field(description="Whether TASKLOG_REDIS_URL is set")
    subscribed: bool = Field(description="Whether this process's subscription is live")
    ok: bool | None = Field(description="Whether Redis answered a ping; null if not configured")
    version: str | None = Field(description="Server version, when it answered")
    error: str | None = Field(description="Why it did not answer, when it did not")


class Health(Contract):
    """Liveness of this process and reachability of what it needs (503 when ``down``).

    A client without the token (when one is set) gets ``status`` alone."""

    status: Literal["ok", "degraded", "down"] = Field(
        description="ok: Postgres answers, and Redis too when configured; degraded: Redis does"
        " not, or the API's Redis subscription is down (pages poll Postgres meanwhile); down:"
        " Postgres does not"
    )
    postgres: PostgresUp | PostgresDown | None = Field(
        default=None, description="Postgres, the source of truth (with the token only)"
    )
    redis: RedisHealth | None = Field(
        default=None, description="Redis, for live updates (with the token only)"
    )


class CollectorReport(Contract):
    """A collector's last heartbeat."""

    host: str = Field(description="Host the collector runs on")
    spool_dir: str = Field(description="Spool directory it drains")
    pid: int = Field(description="Its process id")
    version: str = Field(description="Its celery-tasklog version")
    started_at: Timestamp = Field(description="When it started")
    heartbeat_at: Timestamp = Field(description="Its last heartbeat")
    heartbeat_age: float = Field(description="Seconds since its last heartbeat")
    backlog_files: int = Field(ge=0, description="Spool files waiting to be read")
    backlog_bytes: int = Field(ge=0, description="Bytes waiting to be read")
    stats: dict[str, JsonValue] = Field(description="Its counters since it started")


class ApiProcess(Contract):
    """This API process."""

    sse_clients: int = Field(ge=0, description="SSE streams open")
    redis_reconnects: int = Field(ge=0, description="Times the Redis subscription was re-made")
    redis_last_error: str | None = Field(description="Last Redis error seen, if any")


class Diagnostic(Health):
    """What the diagnostic page shows."""

    collectors: list[CollectorReport] | None = Field(
        description="Every collector that reported; null when Postgres is unreachable"
    )
    api: ApiProcess = Field(description="This API process")
    versions: dict[str, str] = Field(description="Versions of this package and its libraries")
    settings: dict[str, str | int | float | bool | None] = Field(
        description="This process's effective settings, secrets and URL passwords masked"
    )


# -- SSE events (each one ``data:`` line of JSON) ------------------------------------------------


class Connected(Contract):
    """First event of every stream."""

    type: Literal["connected"] = Field(description="The event's kind")
    task_id: str | None = Field(None, description="The task followed (task streams)")
    after_seq: int | None = Field(None, ge=0, description="Lines up to this seq are not sent")
    root_id: str | None = Field(None, description="The workflow followed (workflow streams)")
    after: str | None = Field(
        None, description="The workflow stream's cursor it resumes after (empty: from the start)"
    )


class NewLog(Contract):
    """One line of the task; the event's ``id:`` is its seq (resume with Last-Event-ID)."""

    type: Literal["new_log"] = Field(description="The event's kind")
    id: int = Field(ge=1, description="The line's seq within its task")
    task_id: str = Field(description="The task that printed the line")
    timestamp: Timestamp = Field(description="When the task printed the line")
    stream: StreamName = Field(description="stdout, stderr, log or marker")
    level: str | None = Field(description="Log level of a `log` line, else null")
    message: str = Field(description="The line's text; may hold ANSI codes")


class StatusEvent(Contract):
    """A task changed (state, progress). Only ``type``, ``task_id``, ``status`` and
    ``finished`` are always present: a change relayed from the collector carries the fields it
    knows, one read from Postgres carries every field of `Task`."""

    type: Literal["status"] = Field(description="The event's kind")
    task_id: str = Field(description="Celery task id")
    status: State
    finished: bool = Field(description="Whether the state is final; the task stream ends next")
    task_name: str | None = Field(None, description="Registered task name")
    progress: float | None = Field(None, ge=0, le=100, description="Percent done, or null")
    progress_message: str | None = Field(None, description="Message sent with the progress")
    host: str | None = Field(None, description="Host name of the worker")
    worker: str | None = Field(None, description="Celery worker node name")
    pid: int | None = Field(None, description="Process id of the worker process")
    parent_id: str | None = Field(None, description="Id of the task that sent this one")
    root_id: str | None = Field(None, description="Id of the first task of the workflow")
    retries: int | None = Field(None, ge=0, description="Times the task was retried")
    created_at: Timestamp | None = Field(None, description="When the task was first stored")
    started_at: Timestamp | None = Field(None, description="When the task started running")
    completed_at: Timestamp | None = Field(None, description="When the task finished")
    runtime: float | None = Field(None, description="Seconds the task ran, once finished")
    exc_type: str | None = Field(None, description="Exception class name of a failure")
    exc_message: str | None = Field(None, description="Exception message of a failure")
    line_count: int | None = Field(None, ge=0, description="Lines stored")
    last_seq: int | None = Field(None, ge=0, description="Highest line seq handed out")
    lines_omitted: int | None = Field(None, ge=0, description="Lines dropped by the bound")
    spool_errors: int | None = Field(None, ge=0, description="Records the worker could not spool")


class End(Contract):
    """Last event: the task finished and every line was sent; the server closes the stream."""

    type: Literal["end"] = Field(description="The event's kind")
    task_id: str | None = Field(None, description="The task followed (task streams)")
    last_seq: int | None = Field(None, ge=0, description="Seq of the last line sent")


class Tick(Contract):
    """An event of the test stream."""

    type: Literal["test"] = Field(description="The event's kind")
    count: int = Field(ge=1, description="1, 2, 3... one per interval")


TaskStreamEvent = Annotated[Connected | NewLog | StatusEvent | End, Field(discriminator="type")]
TasksStreamEvent = Annotated[Connected | StatusEvent, Field(discriminator="type")]
TestStreamEvent = Annotated[Connected | Tick | End, Field(discriminator="type")]
WorkflowStreamEvent = Annotated[Connected | NewLog | StatusEvent, Field(discriminator="type")]

#: The SSE event models, for the document's components (in this order).
EVENTS: tuple[type[Contract], ...] = (Connected, NewLog, StatusEvent, End, Tick)

task_stream_events: TypeAdapter[Connected | NewLog | StatusEvent | End] = TypeAdapter(
    TaskStreamEvent
)
tasks_stream_events: TypeAdapter[Connected | StatusEvent] = TypeAdapter(TasksStreamEvent)
test_stream_events: TypeAdapter[Connected | Tick | End] = TypeAdapter(TestStreamEvent)
workflow_stream_events: TypeAdapter[Connected | NewLog | StatusEvent] = TypeAdapter(
    WorkflowStreamEvent
)
