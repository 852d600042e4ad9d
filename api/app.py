"""The application factory: resources opened in `cleanup_ctx`, routes, middlewares."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncIterator
from importlib import resources

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from api import auth, keys, metrics, openapi, routes, search, sse, views, workflows
from api.broadcast import Broadcasts
from api.hub import Hub
from api.launch import Launcher
from api.models import Error
from api.pages import Pages
from api.queries import Store
from api.settings import ApiSettings
from api.slots import StreamSlots
from api.throttle import LoginThrottle
from tasklog.core import supervise
from tasklog.core.errors import StoreUnavailable

log = logging.getLogger("tasklog.api")

PREFIX = "/tasklog"


@web.middleware
async def json_errors(request: web.Request, handler: auth.Handler) -> web.StreamResponse:
    """Every failure is a JSON body with a 4xx/5xx status, never a traceback."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        message = exc.text or exc.reason
        if message.startswith(f"{exc.status}: "):
            message = exc.reason
        response = _error(exc.status, message)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except StoreUnavailable as exc:
        status = 503
        log.warning("%s %s: %s", request.method, request.path, exc)
        return _error(503, str(exc))
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, "internal error (see the API's log)")
    finally:
        if not request.path.startswith(PREFIX + "/sse/"):
            route = request.match_info.route.resource
            name = route.canonical if route is not None else "unmatched"
            metrics.REQUEST_SECONDS.labels(name, request.method, str(status)).observe(
                time.perf_counter() - started
            )


def _error(status: int, message: str) -> web.Response:
    return routes.respond(Error(error=message, status=status), status)


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    primary = Store(
        settings.require_database_url(),
        max_size=settings.api_db_pool_size,
        timeout=settings.api_db_wait,
        search_size=settings.api_search_connections,
        prepare=settings.database_prepared_statements,
    )
    await primary.open()
    store = primary
    if settings.read_url() != primary.conninfo:
        store = Store(
            settings.read_url(),
            max_size=settings.api_db_pool_size,
            timeout=settings.api_db_wait,
            search_size=settings.api_search_connections,
            setting="TASKLOG_API_READ_URL",
            prepare=settings.database_prepared_statements,
        )
        try:
            await store.open()
        except BaseException:
            await primary.close()
            raise
    app[keys.PRIMARY] = primary
    hub = Hub(settings.redis(), cluster=settings.redis_cluster)
    launcher = Launcher(settings.redis())
    app[keys.STORE], app[keys.HUB], app[keys.LAUNCHER] = store, hub, launcher
    app[keys.BROADCASTS] = broadcasts = Broadcasts(hub, primary.task_progress)
    metrics.SSE_BROADCAST_MEMBERS.set_function(lambda: float(broadcasts.members()))
    hub_task = asyncio.create_task(hub.run(), name="redis-hub")
    hub_task.add_done_callback(supervise.stop_on_exit)
    metrics.REDIS_LIVE.set_function(lambda: float(hub.live))
    metrics.REDIS_TASK_CHANNELS.set_function(lambda: float(len(hub.followed())))
    try:
        yield
    finally:
        hub_task.cancel()
        await asyncio.wait({hub_task}, timeout=5)
        await hub.aclose()
        await launcher.close()
        await store.close()
        if store is not primary:
            await primary.close()


async def _stop_streams(app: web.Application) -> None:
    """Shutdown: end every SSE stream now (clients resume with Last-Event-ID) and wait."""
    app[keys.HUB].close_all()
    open_streams = app[keys.STREAMS]
    streams = list(open_streams)
    for stream in streams:
        if stream.prepared:
            stream.stop_streaming()
    if streams:
        await asyncio.wait([asyncio.ensure_future(s.wait()) for s in streams], timeout=5)


class UnparsableRequests(logging.Filter):
    """A request aiohttp cannot parse (a NUL in a header, a broken request line) is answered
    400 and logged by aiohttp as an ERROR with a traceback: the client's mistake, not ours.
    This makes it one WARNING line naming the client and what was wrong."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            client = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            detail = " ".join(str(exc.message).split())  # aiohttp points at the byte on a 2nd line
            record.msg, record.args = "unparsable request from %s: %s", (client, detail)
            record.exc_info = record.exc_text = None
        return True


def _quiet_unparsable_requests() -> None:
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, UnparsableRequests) for f in server_log.filters):
        server_log.addFilter(UnparsableRequests())


def create_app(settings: ApiSettings) -> web.Application:
    """The application; a weak `TASKLOG_API_TOKEN` stops it here (`ConfigError`)."""
    settings.token()
    _quiet_unparsable_requests()
    public = frozenset({PREFIX + "/healthz", PREFIX + "/login"})
    app = web.Application(
        middlewares=[
            json_errors,
            auth.loopback_host,
            auth.same_origin,
            auth.make_middleware(PREFIX, public),
        ]
    )
    app[keys.SETTINGS] = settings
    app[keys.PAGES] = Pages(
        PREFIX, demo_launch=settings.api_demo_launch, login=settings.api_token is not None
    )
    app[keys.LOGINS] = LoginThrottle()
    app[keys.SLOTS] = StreamSlots(settings.api_max_streams)
    app[keys.STREAMS] = weakref.WeakSet()
    app.cleanup_ctx.append(_resources)
    app.on_shutdown.append(_stop_streams)

    r = app.router
    r.add_get(PREFIX + "/api/tasks/", routes.list_tasks)
    r.add_get(PREFIX + "/api/tasks/{task_id}/", routes.get_task)
    r.add_get(PREFIX + "/api/tasks/{task_id}/raw", routes.raw_log)
    r.add_get(PREFIX + "/api/search/", search.search_lines)
    r.add_get(PREFIX + "/api/workflows/{root_id}/", workflows.get_workflow)
    r.add_get(PREFIX + "/sse/workflow/{root_id}/", workflows.workflow_stream)
    r.add_post(PREFIX + "/api/launch/", routes.launch)
    r.add_get(PREFIX + "/api/diagnostic/", routes.diagnostic)
    r.add_get(PREFIX + "/api/openapi.json", openapi.serve)
    r.add_get(PREFIX + "/sse/task/{task_id}/", sse.task_stream)
    r.add_get(PREFIX + "/sse/tasks/", sse.tasks_stream)
    r.add_get(PREFIX + "/sse/test/", sse.test_stream)
    r.add_get(PREFIX + "/healthz", routes.health)
    r.add_get(PREFIX + "/metrics", routes.metrics_text)
    r.add_get(PREFIX + "/", views.task_list)
    r.add_get(PREFIX + "/task/{task_id}/", views.task_view)
    r.add_get(PREFIX + "/search/", views.search_page)
    r.add_get(PREFIX + "/workflow/{root_id}/", views.workflow_page)
    r.add_get(PREFIX + "/diagnostic/", views.diagnostic_page)
    r.add_get(PREFIX + "/launch/", views.launch_page)
    r.add_get(PREFIX + "/login", views.login_page)
    r.add_post(PREFIX + "/login", views.login)
    r.add_post(PREFIX + "/logout", views.logout)
    r.add_static(PREFIX + "/static/", str(resources.files("api").joinpath("static")))
    r.add_get("/", _to_prefix)
    return app


async def _to_prefix(request: web.Request) -> web.Response:
    raise web.HTTPFound(PREFIX + "/")
