"""`tasklog demo`: the whole system on one machine, with nothing installed but the package.

Without TASKLOG_DATABASE_URL / TASKLOG_REDIS_URL it runs embedded Postgres and Redis under a
state directory (`tasklog.demo.embedded`); then it migrates, starts the collector, a demo
Celery worker and the API under a `tasklog.demo.supervisor.Supervisor` (which stops them all,
whatever way the demo ends), launches the demo tasks and shows their captured lines.

A busy API port is one line (TASKLOG_API_PORT given), or another port, printed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import signal
import socket
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from psycopg.rows import dict_row

from collector.migrate import migrate
from tasklog.core import db
from tasklog.core.errors import TasklogError
from tasklog.core.terminal import for_terminal
from tasklog.demo.embedded import free_port
from tasklog.demo.supervisor import Stopped, Supervisor, die_with_parent, say

Q = db.queries("tasklog.demo", "demo.sql")
#: Lines of a launched task the demo prints at most.
SHOWN_LINES = 1000

DEFAULT_API_PORT = 8000


def run_demo(state_dir: str | Path, launch: bool = True) -> None:
    state = Path(state_dir).absolute()
    try:
        state.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TasklogError(f"cannot use state directory {state}: {exc.strerror}") from None
    with Supervisor(state) as sup:
        try:
            _run(sup, launch)
        except Stopped:
            pass


def _run(sup: Supervisor, launch: bool) -> None:
    api_port = _api_port(os.environ)
    database_url, redis_url = _servers(sup)
    sup.check()
    say("migrating the schema")
    migrate(database_url)
    spool = Path(os.environ.get("TASKLOG_SPOOL_DIR") or sup.state / "spool")
    try:
        spool.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TasklogError(f"cannot use spool directory {spool}: {exc.strerror}") from None
    env = {
        **os.environ,
        "TASKLOG_DATABASE_URL": database_url,
        "TASKLOG_REDIS_URL": redis_url,
        "TASKLOG_SPOOL_DIR": str(spool),
        "PYTHONUNBUFFERED": "1",
    }
    sup.spawn("collector", [sys.executable, "-m", "tasklog", "collector"], env)
    # The worker, like any Celery worker, gets no database login and no API token.
    worker_env = {
        k: v for k, v in env.items() if k not in ("TASKLOG_DATABASE_URL", "TASKLOG_API_TOKEN")
    }
    sup.spawn("worker", _worker_argv(), worker_env)
    url = _start_api(sup, {**env, "TASKLOG_API_PORT": str(api_port)})
    say(f"logs of the collector, worker and API are in {sup.logs}")
    if url and _answers(sup, url + "healthz"):
        say(f"open {url} to watch tasks live (the launch page starts more)")
    if launch:
        _launch_and_show(sup, env, database_url)
    sup.started = True
    say("running; press Ctrl-C to stop everything")
    while True:
        sup.sleep(0.5)


def _worker_argv() -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tasklog.demo.app",
        "worker",
        "-P",
        "prefork",
        "-c",
        "2",
        "-l",
        "info",
        "--without-gossip",
        "--without-mingle",
    ]


# --- start-up steps ---------------------------------------------------------------------------


def _servers(sup: Supervisor) -> tuple[str, str]:
    database_url = os.environ.get("TASKLOG_DATABASE_URL")
    redis_url = os.environ.get("TASKLOG_REDIS_URL")
    if database_url is None or redis_url is None:
        from tasklog.demo.embedded_postgres import EmbeddedPostgres
        from tasklog.demo.embedded_redis import EmbeddedRedis
    if database_url is None:
        say(f"starting embedded Postgres in {sup.state / 'postgres'}")
        pg = EmbeddedPostgres(sup.state / "postgres", password=_secret(sup.state, "postgres"))
        sup.stack.callback(pg.stop)
        pg.start()
        if pg.pid is not None:
            # pg_ctl detaches the postmaster: SIGINT asks it for a fast shutdown.
            sup.register("postgres", pg.pid, signal.SIGINT, leader_only=True)
            sup.stack.callback(sup.unregister, "postgres", pg.pid)
        sup.check()
        with db.connect(pg.url()) as conn, db.translated(pg.url()):
            if not conn.execute(Q["database_exists"], {"name": "tasklog"}).fetchone():
                conn.execute(Q["create_database"])
        database_url = pg.url("tasklog")
    else:
        say("using TASKLOG_DATABASE_URL")
    if redis_url is None:
        say(f"starting embedded Redis in {sup.state / 'redis'}")
        rd = EmbeddedRedis(
            sup.state / "redis", preexec=die_with_parent(), password=_secret(sup.state, "redis")
        )
        sup.stack.callback(rd.stop)
        rd.start()
        if rd.pid is not None:
            sup.register("redis", rd.pid, signal.SIGTERM)
            sup.stack.callback(sup.unregister, "redis", rd.pid)
        redis_url = rd.url(0)
    else:
        say("using TASKLOG_REDIS_URL")
    return database_url, redis_url


def _secret(state: Path, name: str) -> str:
    """The embedded server's password, made once and kept in the state directory (0600): the
    servers listen on 127.0.0.1, where any local user could otherwise use them (Postgres as
    its superuser, Redis to write files as the demo's user)."""
    path = state / "secrets" / name
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    value = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


def _api_port(environ: Mapping[str, str]) -> int:
    """The API's port: TASKLOG_API_PORT if given (busy: one line), else 8000 or a free one."""
    host = environ.get("TASKLOG_API_HOST", "127.0.0.1")
    given = environ.get("TASKLOG_API_PORT")
    try:
        port = int(given) if given else DEFAULT_API_PORT
    except ValueError:
        raise TasklogError(f"TASKLOG_API_PORT={given!r} is not a port number") from None
    if _can_listen(host, port):
        return port
    if given:
        raise TasklogError(
            f"port {port} on {host} is in use (TASKLOG_API_PORT): stop what listens there "
            "or choose another port"
        )
    other = free_port(host)
    say(f"port {port} on {host} is in use; the API listens on port {other} instead")
    return other


def _can_listen(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        # As the API's server does: a port in TIME_WAIT from an earlier run is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise TasklogError(f"the API cannot listen on {host}:{port}: {exc.strerror}") from None
    return True


def _start_api(sup: Supervisor, env: dict[str, str]) -> str | None:
    try:
        import api.server  # noqa: F401
    except ImportError:
        say("the API is not installed (pip install 'celery-tasklog[api]'); skipping it")
        return None
    # The launch page and route are off by default; the demo is what they are for.
    env.setdefault("TASKLOG_API_DEMO_LAUNCH", "true")
    sup.spawn("api", [sys.executable, "-m", "tasklog", "api"], env)
    host = env.get("TASKLOG_API_HOST", "127.0.0.1")
    return f"http://{host}:{env['TASKLOG_API_PORT']}/tasklog/"


def _answers(sup: Supervisor, url: str, timeout: float = 30) -> bool:
    """Wait until the API answers (it starts in a second or two)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            sup.sleep(0.2)
    say(f"the API did not answer at {url} within {timeout:.0f}s; see its log")
    return False


def _launch_and_show(sup: Supervisor, env: dict[str, str], database_url: str) -> None:
    from celery import Celery

    app = Celery(
        "tasklog-demo-client",
        broker=env["TASKLOG_REDIS_URL"],
        backend=env["TASKLOG_REDIS_URL"],
        set_as_current=False,
    )
    try:
        quick = app.send_task("demo.demo_quick_task")
        failing = app.send_task("demo.demo_failing_task")
        long = app.send_task("demo.demo_long_task", kwargs={"duration": 30})
        timed = app.send_task("celery_tasklog.tasks.timed_print_task", kwargs={"duration": 8})
        flow = app.send_task("demo.demo_workflow")
        say(
            f"launched demo_quick_task {quick.id}, demo_failing_task {failing.id}, "
            f"demo_long_task {long.id}, timed_print_task {timed.id}, "
            f"demo_workflow {flow.id} (its page: /tasklog/workflow/{flow.id}/)"
        )
        for task_id in (quick.id, failing.id, timed.id):
            _show(sup, database_url, task_id)
    finally:
        app.close()


def _show(sup: Supervisor, database_url: str, task_id: str, timeout: float = 60) -> None:
    """Print a task's stored lines once it has finished (read as the API reads them)."""
    from api.queries import statement
    from tasklog.core.constants import FINISHED_STATES

    deadline = time.monotonic() + timeout
    with db.connect(database_url, row_factory=dict_row) as conn, db.translated(database_url):
        while True:
            task = conn.execute(statement("get_task"), {"task_id": task_id}).fetchone()
            if task and task["state"] in FINISHED_STATES:
                break
            if time.monotonic() > deadline:
                say(f"task {task_id} has not finished after {timeout:.0f}s; see the worker log")
                return
            sup.sleep(0.2)
        params = {"task_id": task_id, "after_seq": 0, "limit": SHOWN_LINES}
        lines = conn.execute(statement("lines_after"), params).fetchall()
    exc_type, exc_message = task["exc_type"], task["exc_message"]
    failure = f" ({exc_type}: {exc_message})" if exc_type else ""
    say(f"{task['task_name']} {task_id}: {task['state']}{failure}, {len(lines)} lines captured:")
    for line in lines:
        with contextlib.suppress(OSError):
            text = f"    {line['seq']:>4} {line['stream']:>6} | {for_terminal(line['message'])}"
            print(text, flush=True)
