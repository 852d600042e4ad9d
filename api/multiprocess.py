"""`tasklog api --workers N`: one port served by N server processes.

(Here a "worker" is one of these API processes, never a Celery worker: the option keeps its
name, the code says "process".)

The parent binds N listening sockets to the one port with SO_REUSEPORT and forks N server
processes, one socket each: the kernel spreads incoming connections evenly over them (a hash
of the addresses), where a single shared socket lets whichever process wakes first take most
of them. The parent supervises; it runs no event loop and serves nothing itself. Every
process is a whole API: its own Postgres pool, its own Redis subscriptions and watched-set
marks, so any page or stream works whichever process a request reaches (a stream resumed on
another process replays from Postgres after Last-Event-ID).

SIGTERM or SIGINT to the parent stops every process gracefully (each ends its streams and
finishes its requests within TASKLOG_API_SHUTDOWN_TIMEOUT); a process that dies takes the
others down with it and the parent exits with an error, for the service manager to restart
the set. Under systemd only the parent speaks to it: READY once every process listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import signal
import socket
import time

from api.app import PREFIX
from api.server import bind_host, serve
from api.settings import ApiSettings
from tasklog.core import sdnotify
from tasklog.core.errors import TasklogError

log = logging.getLogger("tasklog.api")

_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
#: Seconds beyond the shutdown timeout before a worker that has not exited is killed.
_KILL_GRACE = 5.0


class ProcessDied(TasklogError):
    """An API worker process exited on its own; the others were stopped."""


def run(settings: ApiSettings, workers: int) -> None:
    """Serve `settings.api_port` from `workers` processes until SIGTERM or SIGINT."""
    host = bind_host(settings)
    first = _listen(host, settings.api_port)
    port = first.getsockname()[1]  # the port the kernel chose, when TASKLOG_API_PORT is 0
    socks = [first, *(_listen(host, port) for _ in range(workers - 1))]
    ready_r, ready_w = os.pipe()
    # Blocked before forking, so no signal is lost in between; each worker unblocks them.
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    pids: dict[int, int] = {}
    try:
        for number, sock in enumerate(socks, start=1):
            pid = os.fork()
            if pid == 0:
                os.close(ready_r)
                for other in socks:
                    if other is not sock:
                        other.close()
                os._exit(_serve_process(settings, sock, ready_w))
            pids[pid] = number
        os.close(ready_w)
        for sock in socks:
            sock.close()  # the workers hold them
        log.info("started %d API workers (pids %s)", workers, ", ".join(map(str, pids)))
        _supervise(settings, pids, ready_r, f"http://{host}:{port}{PREFIX}/")
    finally:
        _stop(pids, settings.api_shutdown_timeout + _KILL_GRACE)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        os.close(ready_r)


def _listen(host: str, port: int) -> socket.socket:
    try:
        return socket.create_server((host, port), backlog=1024, reuse_port=True)
    except OSError as exc:
        raise TasklogError(
            f"TASKLOG_API_PORT: cannot listen on {host}:{port} ({exc.strerror})"
        ) from None


def _serve_process(settings: ApiSettings, sock: socket.socket, ready_fd: int) -> int:
    """The body of a forked worker: the ordinary API on the inherited socket."""
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        os.environ.pop(name, None)  # the parent alone speaks to systemd
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    try:
        asyncio.run(serve(settings, sock=sock, ready=lambda: os.write(ready_fd, b".")))
    except TasklogError as exc:
        log.error("tasklog: %s", exc)
        return 2
    except Exception:
        log.exception("API worker failed")
        return 1
    return 0


def _supervise(settings: ApiSettings, pids: dict[int, int], ready_fd: int, url: str) -> None:
    """Wait for a stop signal (returns) or a worker's death (raises ProcessDied)."""
    waiting = len(pids)
    interval = sdnotify.watchdog_interval()
    next_ping = time.monotonic()
    while True:
        received = signal.sigtimedwait(_SIGNALS, 0.5)
        if waiting and select.select([ready_fd], [], [], 0)[0]:
            waiting -= len(os.read(ready_fd, 64))
            if waiting <= 0:
                log.info("tasklog api: %d workers listening on %s", len(pids), url)
                sdnotify.ready(f"{len(pids)} workers listening on {url}")
        if interval is not None and time.monotonic() >= next_ping:
            sdnotify.watchdog()
            next_ping = time.monotonic() + interval / 2
        if received is None:
            continue
        if received.si_signo in (signal.SIGTERM, signal.SIGINT):
            log.info("stopping %d API workers", len(pids))
            sdnotify.stopping()
            return
        for pid, code in _reap(pids):
            number = pids.pop(pid)
            raise ProcessDied(
                f"API worker {number} (pid {pid}) exited with code {code}; stopped the others"
            )


def _reap(pids: dict[int, int]) -> list[tuple[int, int]]:
    """The workers that exited, with their exit codes (128+N for signal N)."""
    done = []
    for pid in list(pids):
        with contextlib.suppress(ChildProcessError):
            waited, status = os.waitpid(pid, os.WNOHANG)
            if waited:
                if os.WIFSIGNALED(status):
                    done.append((pid, 128 + os.WTERMSIG(status)))
                else:
                    done.append((pid, os.WEXITSTATUS(status)))
    return done


def _stop(pids: dict[int, int], timeout: float) -> None:
    """SIGTERM every worker left, wait up to `timeout` s, then SIGKILL the stragglers."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        for pid, _ in _reap(pids):
            pids.pop(pid)
        if pids:
            time.sleep(0.05)
    for pid in list(pids):
        log.warning("API worker pid %d did not stop in %.0fs: killed", pid, timeout)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        pids.pop(pid)
