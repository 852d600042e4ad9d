"""The HTML pages: task list, live log view, diagnostic, demo launcher, login."""

from __future__ import annotations

import hmac
import logging
from datetime import timedelta

from aiohttp import web

from api import auth, keys, lookups, params, routes, search, wire, workflows
from tasklog.core.demo_tasks import DEMO_TASKS

log = logging.getLogger("tasklog.api")


#: The task list's time ranges (``?range=``): how far back a task's creation may be.
RANGES = {
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "24h": timedelta(days=1),
    "7d": timedelta(days=7),
}


async def task_list(request: web.Request) -> web.Response:
    filters = routes.task_filter(request)
    store = request.app[keys.STORE]
    info = await store.server_info()  # before the list: the live stream resumes from here
    span = request.query.get("range", "")
    if span and span not in RANGES:
        params.bad(f"range: expected one of {', '.join(RANGES)}")
    if span and info:
        since = info["now"] - RANGES[span]
        filters.since = max(since, filters.since) if filters.since else since
    rows = await store.list_tasks(filters, routes.TASKS_DEFAULT)
    tasks = [wire.task_json(row) for row in rows]
    roots = await lookups.workflow_roots(store.pool, [t["task_id"] for t in tasks])
    for task in tasks:
        if task["task_id"] in roots:
            task["workflow"] = task["task_id"]
        elif task.get("root_id") and task["root_id"] != task["task_id"]:
            task["workflow"] = task["root_id"]
    since = info["now"].isoformat() if info else ""
    return request.app[keys.PAGES].render(
        request, "tasks.html", tasks=tasks, query=dict(request.query), since=since, title="Tasks"
    )


async def task_view(request: web.Request) -> web.Response:
    task_id = params.task_id(request)
    row = await request.app[keys.STORE].get_task(task_id)
    task = wire.task_json(row) if row else None
    workflow = await lookups.workflow_of(request.app[keys.STORE].pool, row)
    return request.app[keys.PAGES].render(
        request, "task.html", task_id=task_id, task=task, workflow=workflow, title=f"Task {task_id}"
    )


async def search_page(request: web.Request) -> web.Response:
    return await search.render_page(request)


async def workflow_page(request: web.Request) -> web.Response:
    return await workflows.render_page(request)


async def diagnostic_page(request: web.Request) -> web.Response:
    report = (await routes.diagnose(request.app)).model_dump(mode="json")
    return request.app[keys.PAGES].render(
        request, "diagnostic.html", report=report, title="Diagnostic"
    )


async def launch_page(request: web.Request) -> web.Response:
    app = request.app
    enabled = app[keys.SETTINGS].api_demo_launch and app[keys.LAUNCHER].available
    return app[keys.PAGES].render(
        request,
        "launch.html",
        status=200 if enabled else 404,
        tasks=DEMO_TASKS,
        enabled=enabled,
        title="Launch demo tasks",
    )


async def login_page(request: web.Request) -> web.Response:
    pages = request.app[keys.PAGES]
    target = auth.safe_next(pages.prefix, request.query.get("next"))
    return pages.render(request, "login.html", next=target, failed=False, title="Log in")


async def login(request: web.Request) -> web.Response:
    """The login form: a right token sets the cookie; wrong ones are throttled per address."""
    app = request.app
    pages, settings, throttle = app[keys.PAGES], app[keys.SETTINGS], app[keys.LOGINS]
    form = await request.post()
    target = auth.safe_next(pages.prefix, str(form.get("next", "")))
    token = settings.token()
    if token is None:
        raise web.HTTPFound(target)  # nothing to log in to
    address = request.remote or "unknown"
    wait = throttle.retry_after(address)
    if wait:
        response = pages.render(
            request, "login.html", status=429, next=target, failed=False, wait=wait, title="Log in"
        )
        response.headers["Retry-After"] = str(wait)
        return response
    given = str(form.get("token", ""))
    # An empty field never matches, whatever the comparison would say of two empty strings.
    if not given or not hmac.compare_digest(given.encode(), token.encode()):
        left = throttle.failed(address)
        log.warning("failed login from %s (%d more tries allowed now)", address, left)
        return pages.render(
            request, "login.html", status=401, next=target, failed=True, title="Log in"
        )
    response = web.HTTPFound(target)
    response.set_cookie(
        auth.COOKIE,
        auth.session_value(token, settings.api_session_epoch),
        path=pages.prefix + "/",
        httponly=True,
        samesite="Strict",
        # Behind a TLS-terminating proxy (docs/deploy.md) the browser's scheme is forwarded.
        secure=request.secure or request.headers.get("X-Forwarded-Proto") == "https",
        max_age=auth.SESSION_SECONDS,
    )
    raise response


async def logout(request: web.Request) -> web.Response:
    """Forget this browser's cookie (`TASKLOG_API_SESSION_EPOCH` logs out every browser)."""
    prefix = request.app[keys.PAGES].prefix
    response = web.HTTPFound(prefix + "/login")
    response.del_cookie(auth.COOKIE, path=prefix + "/")
    raise response
