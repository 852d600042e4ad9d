"""A dependency-free client for systemd's notify protocol (`sd_notify(3)`).

The collector and the API run as `Type=notify` services: they say READY once they serve,
STOPPING when they begin to shut down, and ping the watchdog while their event loop is alive.
Every call is a no-op when `NOTIFY_SOCKET` is unset (a terminal, a container, the test suite),
and none ever raises: a daemon must not die because its supervisor went away.

    from tasklog.core import sdnotify

    sdnotify.ready("collecting from /var/spool/tasklog")
    watchdog = asyncio.create_task(sdnotify.watchdog_loop(stop), name="watchdog")
    ...
    sdnotify.stopping()
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable

logger = logging.getLogger("tasklog.core.sdnotify")

__all__ = [
    "extend_timeout",
    "notify",
    "ready",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval",
    "watchdog_loop",
]


def _address() -> str | None:
    """The socket address from `NOTIFY_SOCKET`, or None when there is nothing to notify."""
    path = os.environ.get("NOTIFY_SOCKET", "")
    if path.startswith("@"):
        # Linux abstract namespace: systemd writes '@', the kernel wants a leading NUL.
        return "\0" + path[1:]
    if path.startswith("/"):
        return path
    # Unset, empty, or a vsock address (vsock:CID:PORT) that only VMs use: not for us.
    return None


def notify(**fields: str | int | float) -> bool:
    """Send `KEY=value` assignments, e.g. `notify(READY=1, STATUS="serving")`.

    Keys are upper-cased. Returns True when the datagram was sent, False when there is no
    `NOTIFY_SOCKET` or sending failed (logged at debug level, never raised).
    """
    address = _address()
    if address is None or not fields:
        return False
    message = "".join(f"{key.upper()}={_one_line(value)}\n" for key, value in fields.items())
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # Non-blocking: a supervisor whose queue is full costs us one message, never a
            # stalled event loop.
            sock.setblocking(False)
            sock.connect(address)
            sock.sendall(message.encode("utf-8", "replace"))
    except OSError as exc:
        logger.debug("sd_notify to %r failed: %s", os.environ.get("NOTIFY_SOCKET"), exc)
        return False
    return True


def _one_line(value: str | int | float) -> str:
    # A newline inside a value would start a new assignment: STATUS="x\nREADY=1" must not lie.
    return str(value).replace("\r", " ").replace("\n", " ")


def ready(status_text: str | None = None) -> bool:
    """Tell systemd start-up is complete (`READY=1`), optionally with a status line."""
    fields: dict[str, str | int] = {"READY": 1}
    if status_text is not None:
        fields["STATUS"] = status_text
    return notify(**fields)


def stopping(status_text: str | None = None) -> bool:
    """Tell systemd the daemon is shutting down (`STOPPING=1`)."""
    fields: dict[str, str | int] = {"STOPPING": 1}
    if status_text is not None:
        fields["STATUS"] = status_text
    return notify(**fields)


def status(text: str) -> bool:
    """Set the one-line status shown by `systemctl status`."""
    return notify(STATUS=text)


def watchdog() -> bool:
    """Ping the watchdog (`WATCHDOG=1`)."""
    return notify(WATCHDOG=1)


def extend_timeout(seconds: float) -> bool:
    """Ask for `seconds` more before systemd gives up on start-up or shutdown (e.g. migrations)."""
    return notify(EXTEND_TIMEOUT_USEC=max(1, int(seconds * 1_000_000)))


def watchdog_interval() -> float | None:
    """The watchdog timeout in seconds (`WATCHDOG_USEC`), or None when none applies to us.

    Like `sd_watchdog_enabled(3)`: `WATCHDOG_PID`, when set, must be this process's pid, so a
    child that inherited the environment does not ping on its parent's behalf.
    """
    pid = os.environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None


async def watchdog_loop(
    stop: asyncio.Event,
    *,
    healthy: Callable[[], bool] | None = None,
) -> None:
    """Ping the watchdog at half its interval until `stop` is set.

    Without a watchdog it just waits for `stop`, so it can sit among supervised tasks either
    way. `healthy`, when given, is asked before each ping; a False (or an exception) skips
    that ping, so a daemon whose loop runs but whose work is wedged gets restarted.
    """
    interval = watchdog_interval()
    if interval is None:
        await stop.wait()
        return
    period = interval / 2
    while not stop.is_set():
        if _is_healthy(healthy):
            watchdog()
        try:
            await asyncio.wait_for(stop.wait(), timeout=period)
        except TimeoutError:
            continue


def _is_healthy(healthy: Callable[[], bool] | None) -> bool:
    if healthy is None:
        return True
    try:
        return bool(healthy())
    except Exception:
        logger.exception("watchdog health check failed; skipping this ping")
        return False
