"""The JSON routes: task list and detail, raw log, demo launch, health, metrics.

Every JSON answer is a model of `api.models` sent by `respond`: the OpenAPI document
(`api.openapi`) is generated from the same models.
"""

from __future__ import annotations

import asyncio
import logging
import platform
from importlib import metadata
from typing import Any, Literal

from aiohttp import web

from api import auth, keys, lookups, metrics, params
from api.launch import check_kwargs
from api.models import (
    ApiProcess,
    CollectorReport,
    Contract,
    Diagnostic,
    Health,
    Launched,
    Line,
    PostgresDown,
    PostgresUp,
    RedisHealth,
    Task,
    TaskDetail,
    TaskList,
)
from api.queries import TaskFilter
from tasklog.core import __version__
from tasklog.core.demo_tasks import DEMO_TASKS
from tasklog.core.errors import StoreUnavailable

log = logging.getLogger("tasklog.api")

TASKS_DEFAULT, TASKS_MAX = 50, 500
LINES_DEFAULT, LINES_MAX = 1000, 5000
RAW_PAGE = 5000


def task_filter(request: web.Request) -> TaskFilter:
    return TaskFilter(
        states=params.states(request),
        name=params.text(request, "name"),
        host=params.text(request, "host"),
        since=params.timestamp(request, "since"),
        before=params.cursor(request),
    )


def respond(model: Contract, status: int = 200, exclude_unset: bool = False) -> web.Response:
    """A JSON answer, serialized by its model of the contract (`api.models`)."""
    return web.Response(
        body=model.model_dump_json(exclude_unset=exclude_unset).encode(),
        status=status,
        content_type="application/json",
        charset="utf-8",
    )


async def list_tasks(request: web.Request) -> web.Response:
    """``GET /tasklog/api/tasks/``: newest first, keyset-paged with a ``next`` link."""
    limit = params.integer(request, "limit", TASKS_DEFAULT, 1, TASKS_MAX)
    filters = task_filter(request)
    rows = await request.app[keys.STORE].list_tasks(filters, limit + 1)
    next_url = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        cursor = params.encode_cursor(last["created_at"], last["task_id"])
        next_url = str(request.url.update_query(cursor=cursor))
    return respond(TaskList(results=[Task.from_row(row) for row in rows], next=next_url))


async def get_task(request: web.Request) -> web.Response:
    """``GET /tasklog/api/tasks/{task_id}/``: the task and its lines after ``after_seq``."""
    task_id = params.task_id(request)
    after = params.after_seq(request)
    limit = params.integer(request, "limit", LINES_DEFAULT, 1, LINES_MAX)
    store = request.app[keys.STORE]
    row = await store.get_task(task_id)
    if row is None:
        params.error(web.HTTPNotFound, f"no task with id {task_id!r}")
    lines = await store.lines_after(task_id, after, limit + 1)
    next_url = None
    if len(lines) > limit:
        lines = lines[:limit]
        next_url = str(request.url.update_query(after_seq=lines[-1]["seq"]))
    return respond(
        TaskDetail.from_row(
            {
                **row,
                "logs": [Line.from_row(line) for line in lines],
                "log_count": row["line_count"],
                "runs": await lookups.runs(store.pool, task_id),
                "next": next_url,
            }
        )
    )


async def raw_log(request: web.Request) -> web.StreamResponse:
    """``GET /tasklog/api/tasks/{task_id}/raw``: the whole log as text, for download."""
    task_id = params.task_id(request)
    store = request.app[keys.STORE]
    if await store.get_task(task_id) is None:
        params.error(web.HTTPNotFound, f"no task with id {task_id!r}")
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/plain; charset=utf-8",
            "Content-Disposition": 'attachment; filename="task.log"',
            "X-Content-Type-Options": "nosniff",
        }
    )
    await response.prepare(request)
    after = 0
    while True:
        rows = await store.lines_after(task_id, after, RAW_PAGE)
        if rows:
            text = "".join(
                f"{r['ts'].isoformat()} [{r['level'] or r['stream']}] {r['message']}\n"
                for r in rows
            )
            await response.write(text.encode("utf-8", "backslashreplace"))
            after = rows[-1]["seq"]
        if len(rows) < RAW_PAGE:
            break
    await response.write_eof()
    return response


async def launch(request: web.Request) -> web.Response:
    """``POST /tasklog/api/launch/``: ``{"task": name, "kwargs": {...}}`` of a demo task."""
    launcher = request.app[keys.LAUNCHER]
    if not request.app[keys.SETTINGS].api_demo_launch:
        params.error(
            web.HTTPNotFound,
            "launching demo tasks is off (on under `tasklog demo` or TASKLOG_API_DEMO_LAUNCH=true)",
        )
    if not launcher.available:
        params.error(web.HTTPNotFound, "launching demo tasks needs TASKLOG_REDIS_URL (the broker)")
    # Another site's page can post a form (text/plain, urlencoded, multipart) without asking;
    # sending JSON would need a CORS preflight, which this API never grants.
    if request.content_type != "application/json":
        params.bad("body: expected a JSON object sent as Content-Type: application/json")
    try:
        body = await request.json()
    except ValueError:
        params.bad("body: expected a JSON object")
    if not isinstance(body, dict):
        params.bad("body: expected a JSON object")
    name = body.get("task")
    if not isinstance(name, str) or name not in DEMO_TASKS:
        params.bad(f"task: expected one of {', '.join(DEMO_TASKS)}")
    kwargs = body.get("kwargs") or {}
    problem = check_kwargs(name, kwargs)
    if problem:
        params.bad(problem)
    try:
        async with asyncio.timeout(10):
            task_id = await launcher.launch(name, kwargs)
    except Exception as exc:  # the broker's errors are many; the user needs one sentence
        log.warning("could not launch %s: %s", name, exc)
        params.error(web.HTTPServiceUnavailable, f"the broker refused the task: {exc}")
    prefix = request.app[keys.PAGES].prefix
    return respond(
        Launched(task_id=task_id, task_name=name, url=f"{prefix}/task/{task_id}/"), status=202
    )


async def health(request: web.Request) -> web.Response:
    """``GET /tasklog/healthz``: 200 ``ok`` or ``degraded`` (Redis away), 503 ``down`` (Postgres
    away). Only a client holding the token (or any, without one) learns more: the servers'
    versions and errors are of use to an attacker."""
    report = await check(request.app)
    status = 503 if report.status == "down" else 200
    if not auth.is_authorized(request, request.app[keys.SETTINGS]):
        report = Health(status=report.status)
    # Unset parts (postgres, redis) are left out, not sent as null.
    return respond(report, status=status, exclude_unset=True)


async def check(app: web.Application) -> Health:
    store, hub = app[keys.STORE], app[keys.HUB]
    pg: PostgresUp | PostgresDown
    try:
        async with asyncio.timeout(3):
            info = await store.server_info()
        assert info is not None
        pg = PostgresUp(ok=True, version=info["version"], schema_version=info["schema_version"])
    except (StoreUnavailable, TimeoutError) as exc:
        pg = PostgresDown(ok=False, error=str(exc) or "timed out")
    ping: dict[str, Any] = await hub.ping() if hub.configured else {}
    redis = RedisHealth(
        configured=hub.configured,
        subscribed=hub.live,
        ok=ping.get("ok"),
        version=ping.get("version"),
        error=ping.get("error") or (None if hub.live else hub.last_error),
    )
    status: Literal["ok", "degraded", "down"] = "down"
    if pg.ok:
        # Degraded while Redis does not answer or the hub's link is down: pages then poll.
        up = redis.ok is True and hub.live
        status = "ok" if not hub.configured or up else "degraded"
    return Health(status=status, postgres=pg, redis=redis)


async def diagnostic(request: web.Request) -> web.Response:
    """``GET /tasklog/api/diagnostic/``: what the diagnostic page shows."""
    return respond(await diagnose(request.app))


async def diagnose(app: web.Application) -> Diagnostic:
    collectors: list[CollectorReport] | None
    try:
        collectors = [CollectorReport(**row) for row in await app[keys.STORE].collectors()]
    except StoreUnavailable:
        collectors = None
    hub = app[keys.HUB]
    return Diagnostic(
        **dict(await check(app)),
        collectors=collectors,
        api=ApiProcess(
            sse_clients=hub.clients(),
            redis_reconnects=hub.reconnects,
            redis_last_error=hub.last_error,
        ),
        versions=versions(),
        settings=app[keys.SETTINGS].masked(),
    )


def versions() -> dict[str, str]:
    out = {"celery-tasklog": __version__, "python": platform.python_version()}
    for dist in ("aiohttp", "aiohttp-sse", "psycopg", "psycopg-pool", "redis", "celery"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


async def metrics_text(request: web.Request) -> web.Response:
    body, content_type = metrics.render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response
