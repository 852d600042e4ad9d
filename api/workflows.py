"""Workflows: the tasks sharing a ``root_id`` (chains, groups, chords), and their merged log.

``GET /tasklog/api/workflows/{root_id}/`` is ``{"root_id", "tasks": [task, ...], "truncated"}``
with every task of the workflow (the task list's shape, plus ``parent_id`` and ``root_id``),
oldest first. ``GET /tasklog/sse/workflow/{root_id}/`` is one live stream of all their lines,
each ``new_log`` event tagged with its ``task_id``, and a ``status`` event per task change.

The merged stream cannot use a seq as its ``id:``: each task numbers its own lines, and tasks on
different hosts are stored in no common order. Its ``id:`` is a `WorkflowCursor`, the last seq
sent of every task, so a reconnecting browser (Last-Event-ID) resumes each task exactly where
it stood. The stream follows the hub's tasks channel only: each stored batch announces the
task's ``last_seq`` there, and the lines themselves are read from Postgres, which makes it
gap-free by construction; a Redis outage or a quiet spell re-reads Postgres as the task stream
does. Tasks that join the workflow later (a chord's body) are found when their first message
arrives.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from psycopg import sql

from api import keys, params, wire
from api.follow import follow
from api.framing import frame
from api.lookups import WORKFLOW_TASKS_MAX, Q, WorkflowCursor, fetch
from api.models import Task, Workflow
from api.queries import TASK_COLUMNS, Row
from api.routes import respond
from api.sse import RETRY_MS, Stream, open_stream
from tasklog.core.constants import FINISHED_STATES, MAX_TASK_ID_BYTES, task_id_problem
from tasklog.core.errors import StoreUnavailable

log = logging.getLogger("tasklog.api.workflows")

REPLAY_PAGE = 1000
#: Task ids known not to belong to the followed workflow, remembered up to this many.
MAX_STRANGERS = 10_000


WORKFLOW_TASKS = sql.SQL(Q["workflow_tasks"]).format(
    columns=sql.SQL(", ").join(map(sql.Identifier, TASK_COLUMNS))
)


async def workflow_tasks(request: web.Request, root_id: str, *, live: bool = False) -> list[Row]:
    """The workflow's tasks, from the read replica (`live`: from the primary, as a stream
    reads, so that a lagging replica never hides what Redis announced)."""
    pool = request.app[keys.PRIMARY if live else keys.STORE].pool
    params_ = {"root_id": root_id, "limit": WORKFLOW_TASKS_MAX + 1}
    return await fetch(pool, WORKFLOW_TASKS, params_)


def root_param(request: web.Request) -> str:
    """The root id of the path: a task id, validated as `params.task_id` does."""
    value = request.match_info["root_id"]
    problem = task_id_problem(value)
    if problem is not None or any(ord(c) < 32 or ord(c) == 0x7F for c in value):
        params.bad(
            f"root_id: the id {problem or 'holds a control character'}; expected 1 to "
            f"{MAX_TASK_ID_BYTES} bytes of UTF-8 without control characters"
        )
    return value


async def get_workflow(request: web.Request) -> web.Response:
    """``GET /tasklog/api/workflows/{root_id}/``: every task of the workflow, oldest first."""
    root_id = root_param(request)
    rows = await workflow_tasks(request, root_id)
    if not rows:
        params.error(web.HTTPNotFound, f"no workflow with root id {root_id!r}")
    return respond(
        Workflow(
            root_id=root_id,
            tasks=[Task.from_row(row) for row in rows[:WORKFLOW_TASKS_MAX]],
            truncated=len(rows) > WORKFLOW_TASKS_MAX,
        )
    )


class WorkflowFollower:
    """One client following one workflow: its members, what was sent of each (a
    `api.follow.Source`)."""

    finished = False
    #: Lines are whole only from Postgres: news that came while it was away is read there.
    news_while_behind = False

    def __init__(self, stream: Stream, request: web.Request, root_id: str, cursor: WorkflowCursor):
        self.stream = stream
        self.request = request
        # The primary: the stream follows what Redis announces, which a replica may lag.
        self.pool = request.app[keys.PRIMARY].pool
        self.root_id = root_id
        self.cursor = cursor
        self.members: dict[str, Row] = {}
        self.strangers: set[str] = set()
        self.status: dict[str, tuple[Any, ...]] = {}

    @property
    def what(self) -> str:
        return f"workflow {self.root_id}"

    async def catch_up(self) -> None:
        await self.refresh_members()
        await self.replay()

    async def refresh_members(self) -> None:
        """Read the workflow's tasks; a task not seen before is announced whole."""
        members = await workflow_tasks(self.request, self.root_id, live=True)
        for row in members[:WORKFLOW_TASKS_MAX]:
            known = row["task_id"] in self.members
            self.members[row["task_id"]] = row
            task = wire.task_json(row)
            await self.send_status(task, force=not known)

    async def send_status(self, task: wire.Json, force: bool = False) -> None:
        key = tuple(task.get(name) for name in wire.STATUS_KEYS)
        task_id = str(task.get("task_id"))
        if force or self.status.get(task_id) != key:
            self.status[task_id] = key
            await self.stream.event(wire.status_event(task))

    async def replay(self) -> None:
        """Every stored line of every member after what was sent of it, in time order."""
        while self.members:
            ids = list(self.members)
            after = [self.cursor.after(task_id) for task_id in ids]
            query = {"task_ids": ids, "after": after, "limit": REPLAY_PAGE}
            rows = await fetch(self.pool, Q["workflow_lines"], query)
            frames = []
            for row in rows:
                task_id = row["task_id"]
                if row["seq"] <= self.cursor.after(task_id):
                    continue
                self.cursor.advance(task_id, row["seq"])
                data = wire.dumps(wire.line_json(row, task_id))
                frames.append(frame(data, self.cursor.encode()))
            await self.stream.lines(frames)
            if len(rows) < REPLAY_PAGE:
                return

    async def on_batch(self, batch: list[Any]) -> None:
        """Task changes from the hub: members' states, new members, news of stored lines."""
        unknown = {
            str(m.get("task_id"))
            for m in batch
            if m.get("task_id") not in self.members and m.get("task_id") not in self.strangers
        }
        if unknown:
            roots = await fetch(self.pool, Q["roots_of"], {"task_ids": list(unknown)})
            joined = {r["task_id"] for r in roots if r["root_id"] == self.root_id}
            if len(self.strangers) > MAX_STRANGERS:
                self.strangers.clear()
            self.strangers |= unknown - joined
            if joined:
                await self.refresh_members()
        behind = False
        for message in batch:
            task_id = message.get("task_id")
            if task_id not in self.members:
                continue
            announced = message.get("last_seq")
            if announced is not None and announced > self.cursor.after(task_id):
                behind = True
            elif announced is None and message.get("status") in FINISHED_STATES:
                behind = True
        if behind:
            await self.replay()  # the lines before the states that announced them
        for message in batch:
            if message.get("task_id") in self.members:
                await self.send_status(message)


async def workflow_stream(request: web.Request) -> web.StreamResponse:
    """``GET /tasklog/sse/workflow/{root_id}/``: replay after Last-Event-ID, then live. It takes
    one of the process's stream slots, as every stream does (`api.slots`)."""
    with request.app[keys.SLOTS].take():
        return await _workflow_stream(request)


async def _workflow_stream(request: web.Request) -> web.StreamResponse:
    root_id = root_param(request)
    raw = request.headers.get("Last-Event-ID") or request.query.get("after") or ""
    try:
        cursor = WorkflowCursor.decode(raw)
    except ValueError:
        params.bad("Last-Event-ID: not a cursor of this stream (key:seq pairs joined by '.')")
    app = request.app
    settings, hub = app[keys.SETTINGS], app[keys.HUB]
    async with hub.subscribe(None, settings.api_client_buffer) as sub:
        # Read before the response starts, so a dead Postgres is a 503.
        await workflow_tasks(request, root_id, live=True)
        async with open_stream(request, sub) as stream:
            follower = WorkflowFollower(stream, request, root_id, cursor)
            await stream.event(
                {"type": wire.CONNECTED, "root_id": root_id, "after": cursor.encode()},
                retry=RETRY_MS,
            )
            try:
                await follow(follower, sub, lambda: hub.live, settings)
            except StoreUnavailable as exc:
                log.warning("stream of workflow %s ended: %s", root_id, exc)
            except (ConnectionResetError, TimeoutError):
                pass
    return stream


async def render_page(request: web.Request) -> web.Response:
    """``GET /tasklog/workflow/{root_id}/`` (via `api.views`): the tree and the merged log."""
    root_id = root_param(request)
    rows = await workflow_tasks(request, root_id)
    tasks = [wire.task_json(row) for row in rows[:WORKFLOW_TASKS_MAX]]
    return request.app[keys.PAGES].render(
        request,
        "workflow.html",
        root_id=root_id,
        tasks=tasks,
        title=f"Workflow {root_id}",
    )
