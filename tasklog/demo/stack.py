"""`tasklog demo`: the whole system on one machine, with nothing installed but the package.

Without TASKLOG_DATABASE_URL / TASKLOG_REDIS_URL it runs embedded Postgres and Redis under a
state directory; then it migrates, starts the collector, a demo Celery worker and the API,
launches the demo tasks, shows their captured lines, and stops everything on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from collector.migrate import migrate
from tasklog.core.errors import TasklogError


def say(message: str) -> None:
    print(f"tasklog demo: {message}", flush=True)


def run_demo(state_dir: str | Path, launch: bool = True) -> None:
    state = Path(state_dir).absolute()
    state.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        database_url, redis_url = _servers(state, stack)
        say("migrating the schema")
        migrate(database_url)
        spool = Path(os.environ.get("TASKLOG_SPOOL_DIR") or state / "spool")
        spool.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "TASKLOG_DATABASE_URL": database_url,
            "TASKLOG_REDIS_URL": redis_url,
            "TASKLOG_SPOOL_DIR": str(spool),
            "PYTHONUNBUFFERED": "1",
        }
        logs = state / "logs"
        logs.mkdir(exist_ok=True)
        procs = stack.enter_context(_children())
        procs.append(_spawn("collector", [sys.executable, "-m", "tasklog", "collector"], env, logs))
        procs.append(
            _spawn(
                "worker",
                [
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
                ],
                env,
                logs,
            )
        )
        url = _start_api(env, logs, procs)
        say(f"logs of the collector, worker and API are in {logs}")
        if url and _answers(url + "healthz"):
            say(f"open {url} to watch tasks live (the launch page starts more)")
        if launch:
            _launch_and_show(env, database_url)
        say("running; press Ctrl-C to stop everything")
        _wait_for_interrupt(procs)
        say("stopping")


def _servers(state: Path, stack: contextlib.ExitStack) -> tuple[str, str]:
    database_url = os.environ.get("TASKLOG_DATABASE_URL")
    redis_url = os.environ.get("TASKLOG_REDIS_URL")
    if database_url is None or redis_url is None:
        from tasklog.demo.embedded import EmbeddedPostgres, EmbeddedRedis
    if database_url is None:
        say(f"starting embedded Postgres in {state / 'postgres'}")
        pg = EmbeddedPostgres(state / "postgres")
        pg.start()
        stack.callback(pg.stop)
        with psycopg.connect(pg.url(), autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'tasklog'").fetchone():
                conn.execute("CREATE DATABASE tasklog")
        database_url = pg.url("tasklog")
    else:
        say("using TASKLOG_DATABASE_URL")
    if redis_url is None:
        say(f"starting embedded Redis in {state / 'redis'}")
        rd = EmbeddedRedis(state / "redis")
        rd.start()
        stack.callback(rd.stop)
        redis_url = rd.url(0)
    else:
        say("using TASKLOG_REDIS_URL")
    return database_url, redis_url


@contextlib.contextmanager
def _children() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in reversed(procs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def _spawn(name: str, argv: list[str], env: dict[str, str], logs: Path) -> subprocess.Popen[bytes]:
    say(f"starting the {name}")
    with (logs / f"{name}.log").open("ab") as log:
        # Own process group: Ctrl-C reaches us only, and we stop each child in order.
        return subprocess.Popen(
            argv,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _start_api(env: dict[str, str], logs: Path, procs: list[Any]) -> str | None:
    try:
        import api.server  # noqa: F401
    except ImportError:
        say("the API is not installed (pip install 'celery-tasklog[api]'); skipping it")
        return None
    host = env.get("TASKLOG_API_HOST", "127.0.0.1")
    port = env.get("TASKLOG_API_PORT", "8000")
    procs.append(_spawn("api", [sys.executable, "-m", "tasklog", "api"], env, logs))
    return f"http://{host}:{port}/tasklog/"


def _answers(url: str, timeout: float = 30) -> bool:
    """Wait until the API answers (it starts in a second or two)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            time.sleep(0.2)
    say(f"the API did not answer at {url} within {timeout:.0f}s; see its log")
    return False


def _launch_and_show(env: dict[str, str], database_url: str) -> None:
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
        say(
            f"launched demo_quick_task {quick.id}, demo_failing_task {failing.id}, "
            f"demo_long_task {long.id}, timed_print_task {timed.id}"
        )
        for task_id in (quick.id, failing.id, timed.id):
            _show(database_url, task_id)
    finally:
        app.close()


def _show(database_url: str, task_id: str, timeout: float = 60) -> None:
    """Print a task's stored lines once it has finished."""
    from tasklog.core.constants import FINISHED_STATES

    deadline = time.monotonic() + timeout
    with psycopg.connect(database_url, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT task_name, state, exc_type, exc_message FROM tasks WHERE task_id = %s",
                (task_id,),
            ).fetchone()
            if row and row[1] in FINISHED_STATES:
                break
            if time.monotonic() > deadline:
                say(f"task {task_id} has not finished after {timeout:.0f}s; see the worker log")
                return
            time.sleep(0.2)
        name, state, exc_type, exc_message = row
        lines = conn.execute(
            "SELECT seq, stream, message FROM lines WHERE task_id = %s ORDER BY seq", (task_id,)
        ).fetchall()
    failure = f" ({exc_type}: {exc_message})" if exc_type else ""
    say(f"{name} {task_id}: {state}{failure}, {len(lines)} lines captured:")
    for seq, stream, message in lines:
        print(f"    {seq:>4} {stream:>6} | {message}", flush=True)


def _wait_for_interrupt(procs: list[subprocess.Popen[bytes]]) -> None:
    try:
        while True:
            for proc in procs:
                if proc.poll() is not None:
                    raise TasklogError(
                        f"a demo process exited with code {proc.returncode}: {proc.args!r}; "
                        "see its log"
                    )
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
