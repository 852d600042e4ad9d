"""`tasklog api`: serve the application until SIGTERM or SIGINT, then shut down gracefully."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable

from aiohttp import web

from api.app import PREFIX, create_app
from api.auth import is_loopback
from api.settings import ApiSettings
from tasklog.core import sdnotify, supervise

log = logging.getLogger("tasklog.api")


def bind_host(settings: ApiSettings) -> str:
    """The address to listen on: loopback only unless a token protects the API (a weak
    token stops the start here: `ConfigError`)."""
    settings.token()
    host = settings.api_host
    if settings.api_token is not None:
        return host
    if is_loopback(host):
        log.warning(
            "TASKLOG_API_TOKEN is not set: the API is open to anyone on this machine"
            " and listens on %s only (answering loopback Host names only)",
            host,
        )
        return host
    if settings.api_insecure_bind:
        log.warning(
            "TASKLOG_API_TOKEN is not set and TASKLOG_API_INSECURE_BIND is on: the API"
            " on %s is open to anyone who can reach it",
            host,
        )
        return host
    log.warning(
        "TASKLOG_API_TOKEN is not set: listening on 127.0.0.1 instead of %s"
        " (set a token to listen on other addresses)",
        host,
    )
    return "127.0.0.1"


def run(settings: ApiSettings) -> None:
    """Run the API until SIGTERM or SIGINT (blocking)."""
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    asyncio.run(serve(settings))


async def serve(
    settings: ApiSettings,
    stop: asyncio.Event | None = None,
    *,
    sock: socket.socket | None = None,
    ready: Callable[[], object] | None = None,
) -> None:
    """Serve until `stop` (or SIGTERM/SIGINT); on `sock` when given (`api.multiprocess` shares
    one listening socket between processes), calling `ready` once it accepts."""
    app = create_app(settings)  # a weak token stops here, before anything listens
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    host = bind_host(settings) if sock is None else sock.getsockname()[0]
    runner = web.AppRunner(
        app,
        handle_signals=False,
        shutdown_timeout=settings.api_shutdown_timeout,
        access_log=None,
        # A client that goes away ends its handler at once: a stream frees its slot then, not
        # at its next heartbeat, and a search is cancelled in Postgres.
        handler_cancellation=True,
    )
    await runner.setup()
    try:
        site: web.BaseSite = (
            web.TCPSite(runner, host, settings.api_port)
            if sock is None
            else web.SockSite(runner, sock)
        )
        await site.start()
        port = runner.addresses[0][1] if runner.addresses else settings.api_port
        log.info("tasklog api listening on http://%s:%s%s/", host, port, PREFIX)
        if ready is not None:
            ready()
        sdnotify.ready(f"listening on {host}:{port}")
        watchdog = asyncio.create_task(
            supervise.restarting("the systemd watchdog", lambda: sdnotify.watchdog_loop(stop)),
            name="watchdog",
        )
        watchdog.add_done_callback(supervise.stop_on_exit)
        await stop.wait()
        log.info("shutting down")
        sdnotify.stopping()
        await watchdog
    finally:
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
