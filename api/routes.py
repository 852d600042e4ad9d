"""The JSON routes: task list and detail, raw log, demo launch, health, metrics, OpenAPI."""

from __future__ import annotations

import asyncio
import logging
import platform
from importlib import metadata
from typing import Any

from aiohttp import web

from api import keys, metrics, openapi, params, wire
from api.launch import DEMO_TASKS, check_kwargs
from api.queries import TaskFilter
from tasklog.core import __version__
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
    return web.json_response(
        {"results": [wire.task_json(row) for row in rows], "next": next_url}, dumps=wire.dumps
    )


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
    out = wire.task_json(row)
    out["logs"] = [
        {k: v for k, v in wire.line_json(line, task_id).items() if k not in ("type", "task_id")}
        for line in lines
    ]
    out["log_count"] = row["line_count"]
    out["next"] = next_url
    return web.json_response(out, dumps=wire.dumps)


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
    if not request.app[keys.SETTINGS].api_demo_launch or not launcher.available:
        params.error(web.HTTPNotFound, "launching demo tasks is disabled (no TASKLOG_REDIS_URL?)")
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
    return web.json_response(
        {"task_id": task_id, "task_name": name, "url": f"{prefix}/task/{task_id}/"}, status=202
    )


async def health(request: web.Request) -> web.Response:
    """``GET /tasklog/healthz``: the process is up; Postgres and Redis reachability."""
    report = await check(request.app)
    return web.json_response(report)


async def check(app: web.Application) -> dict[str, Any]:
    store, hub = app[keys.STORE], app[keys.HUB]
    pg: dict[str, Any]
    try:
        async with asyncio.timeout(3):
            info = await store.server_info()
        assert info is not None
        pg = {"ok": True, "version": info["version"], "schema_version": info["schema_version"]}
    except (StoreUnavailable, TimeoutError) as exc:
        pg = {"ok": False, "error": str(exc) or "timed out"}
    redis: dict[str, Any] = {"configured": hub.configured, "subscribed": hub.live}
    if hub.configured:
        redis.update(await hub.ping())
    ok = pg["ok"] and (not hub.configured or redis["ok"])
    return {"status": "ok" if ok else "degraded", "postgres": pg, "redis": redis}


async def diagnostic(request: web.Request) -> web.Response:
    """``GET /tasklog/api/diagnostic/``: what the diagnostic page shows."""
    return web.json_response(await diagnose(request.app), dumps=wire.dumps)


async def diagnose(app: web.Application) -> dict[str, Any]:
    report = await check(app)
    try:
        report["collectors"] = [
            {k: wire._iso(v) for k, v in row.items()} for row in await app[keys.STORE].collectors()
        ]
    except StoreUnavailable:
        report["collectors"] = None
    hub = app[keys.HUB]
    report["api"] = {
        "sse_clients": hub.clients(),
        "redis_reconnects": hub.reconnects,
        "redis_last_error": hub.last_error,
    }
    report["versions"] = versions()
    report["settings"] = app[keys.SETTINGS].masked()
    return report


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


async def openapi_doc(request: web.Request) -> web.Response:
    return web.json_response(openapi.document(request.app[keys.PAGES].prefix))
