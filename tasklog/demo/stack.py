"""`tasklog demo`: the whole system on one machine, with nothing installed but the package.

Without TASKLOG_DATABASE_URL / TASKLOG_REDIS_URL it runs embedded Postgres and Redis under a
state directory; then it migrates, starts the collector, a demo Celery worker and the API,
launches the demo tasks and shows their captured lines.

It is a supervisor, and behaves like one:
- Ctrl-C, SIGTERM and SIGHUP stop everything it started, in order, then it exits 0.
- Nothing it started outlives it, even when it is killed with SIGKILL: each child gets
  SIGTERM from the kernel when the demo dies (PR_SET_PDEATHSIG), and a watchdog process of
  its own, holding the only read end of a pipe the demo writes, sees the pipe close and
  stops every process group the demo registered, the embedded Postgres (which pg_ctl
  detaches) included: SIGTERM (SIGINT, a fast shutdown, for Postgres), SIGKILL after a grace.
- Each process it starts has a pid file under STATE/pids; what a killed demo left running on
  the same state directory is found through them and stopped before anything starts.
- A child that exits stops the demo with one line naming it, its last words and its log.
- A busy API port is one line (TASKLOG_API_PORT given), or another port, printed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

from psycopg.rows import dict_row

from collector.migrate import migrate
from tasklog.core import db
from tasklog.core.errors import TasklogError
from tasklog.core.process import pid_alive
from tasklog.core.terminal import for_terminal
from tasklog.demo.embedded import free_port, group_alive, log_tail

Q = db.queries("tasklog.demo", "demo.sql")
#: Lines of a launched task the demo prints at most.
SHOWN_LINES = 1000

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: Seconds a child has between SIGTERM and SIGKILL. A Celery worker's warm shutdown would wait
#: for a running task (the long demo task takes 30 s): the demo does not.
GRACE = 10.0
DEFAULT_API_PORT = 8000
PR_SET_PDEATHSIG = 1
# What signal.signal returns and takes.
_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None
#: Stop order for what an earlier demo left running: the programs before their servers.
_LEFTOVER_ORDER = ("api", "worker", "collector", "redis", "postgres")


def say(message: str) -> None:
    # A closed terminal (SIGHUP) must not stop the demo from stopping its children.
    with contextlib.suppress(OSError):
        print(f"tasklog demo: {message}", flush=True)


class ChildExited(TasklogError):
    """A process the demo started has exited."""


class _Stop(Exception):
    """A stop signal arrived; raised at the next safe point, never inside a signal handler."""


def run_demo(state_dir: str | Path, launch: bool = True) -> None:
    state = Path(state_dir).absolute()
    try:
        state.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TasklogError(f"cannot use state directory {state}: {exc.strerror}") from None
    with Supervisor(state) as sup:
        try:
            _run(sup, launch)
        except _Stop:
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


# --- the supervisor ---------------------------------------------------------------------------


class _Child:
    def __init__(self, name: str, popen: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name = name
        self.popen = popen
        self.log_path = log_path


class Supervisor:
    """Starts the demo's processes, ties their lives to its own and stops them."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.logs = state / "logs"
        self.pids = state / "pids"
        self.started = False
        self.stack = contextlib.ExitStack()
        self._children: list[_Child] = []
        self._stop_signal: int | None = None
        self._handlers: dict[int, _Handler] = {}
        self._watchdog: IO[bytes] | None = None
        self._watchdog_proc: subprocess.Popen[bytes] | None = None
        self._claimed = False

    # -- entering and leaving -------------------------------------------------------------

    def __enter__(self) -> Supervisor:
        for signum in STOP_SIGNALS:
            self._handlers[signum] = signal.signal(signum, self._on_signal)
        try:
            self.logs.mkdir(exist_ok=True)
            self.pids.mkdir(exist_ok=True)
            self._claim()
            self._stop_leftovers()
            self._start_watchdog()
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is _Stop or self._stop_signal is not None:
            say("stopping")
        clean = False
        try:
            self._stop_children()
            self.stack.close()
            clean = True
        finally:
            self._close_watchdog(clean)
            self._release()

    def _claim(self) -> None:
        """Take the state directory, unless another demo runs on it."""
        mine = self.pids / "demo.pid"
        other = _read_pidfile(mine)
        if (
            other is not None
            and other[0] != os.getpid()
            and _is_ours(*other)
            and pid_alive(other[0])
        ):
            raise TasklogError(
                f"another tasklog demo (pid {other[0]}) runs on {self.state}; "
                "stop it first, or use another --state-dir"
            )
        _write_pidfile(mine, os.getpid())
        self._claimed = True

    def _release(self) -> None:
        if self._claimed:
            (self.pids / "demo.pid").unlink(missing_ok=True)
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)
        self._handlers.clear()

    # -- stop requests and child deaths ---------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only noted here: raising in a handler could land between a fork and the line that
        # records the child. The main loop's waits all call check() a few times a second.
        if self._stop_signal is None:
            self._stop_signal = signum

    def check(self) -> None:
        """Raise _Stop if a stop signal came, ChildExited if a child has exited."""
        if self._stop_signal is not None:
            raise _Stop(signal.Signals(self._stop_signal).name)
        for child in self._children:
            code = child.popen.poll()
            if code is not None:
                when = "" if self.started else " during start-up"
                raise ChildExited(
                    f"the {child.name} exited with code {code}{when} "
                    f"({_last_words(child.log_path)}); its log: {child.log_path}"
                )

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)
        self.check()

    # -- starting and registering ---------------------------------------------------------

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        self.check()
        say(f"starting the {name}")
        log_path = self.logs / f"{name}.log"
        with log_path.open("ab") as log:
            # A session of its own: Ctrl-C reaches the demo only, which stops each child in
            # order; and its process group (its Celery pool too) can be stopped whole.
            popen = subprocess.Popen(
                argv,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        self._children.append(_Child(name, popen, log_path))
        self.register(name, popen.pid, signal.SIGTERM)
        return popen

    def register(self, name: str, pgid: int, first: int, *, leader_only: bool = False) -> None:
        """Write `name`'s pid file and tell the watchdog how to stop its process group:
        `first` to the leader alone or to the whole group, SIGKILL to the group after GRACE."""
        _write_pidfile(self.pids / f"{name}.pid", pgid, first, leader_only)
        self._tell(f"add {pgid} {first} {int(leader_only)}")

    def unregister(self, name: str, pgid: int) -> None:
        (self.pids / f"{name}.pid").unlink(missing_ok=True)
        self._tell(f"del {pgid}")

    # -- stopping -------------------------------------------------------------------------

    def _stop_children(self) -> None:
        children, self._children = self._children[::-1], []
        groups = {c.popen.pid: (int(signal.SIGTERM), False) for c in children}
        stop_groups(groups, GRACE)
        for child in children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(5)
            self.unregister(child.name, child.popen.pid)

    def _stop_leftovers(self) -> None:
        found = {path.stem: _read_pidfile(path) for path in self.pids.glob("*.pid")}
        found.pop("demo", None)
        for name in sorted(
            found, key=lambda n: _LEFTOVER_ORDER.index(n) if n in _LEFTOVER_ORDER else -1
        ):
            record = found[name]
            if record is not None and _is_ours(record[0], record[1]):
                pgid, _start, first, leader_only = record
                say(f"stopping the {name} (pid {pgid}) left running by an earlier demo")
                if not stop_groups({pgid: (first, leader_only)}, GRACE):
                    raise TasklogError(
                        f"the {name} (pid {pgid}) left by an earlier demo survived SIGKILL"
                    )
            (self.pids / f"{name}.pid").unlink(missing_ok=True)

    # -- the watchdog ---------------------------------------------------------------------

    def _start_watchdog(self) -> None:
        read, write = os.pipe()  # neither end is inherited by the other children
        try:
            with (self.logs / "watchdog.log").open("ab") as log:
                # Its own session: a signal to the demo's group does not reach it. No
                # PDEATHSIG: it must outlive the demo.
                self._watchdog_proc = subprocess.Popen(
                    [sys.executable, "-c", "from tasklog.demo.stack import watchdog; watchdog()"],
                    stdin=read,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        finally:
            os.close(read)
        self._watchdog = os.fdopen(write, "wb", buffering=0)

    def _tell(self, line: str) -> None:
        if self._watchdog is None:
            return
        try:
            self._watchdog.write(line.encode() + b"\n")
        except OSError:
            # The watchdog was killed: the children still die with the demo (PDEATHSIG).
            say("the watchdog process is gone; a SIGKILL of the demo could leave Postgres running")
            with contextlib.suppress(OSError):
                self._watchdog.close()
            self._watchdog = None

    def _close_watchdog(self, clean: bool) -> None:
        """Say "done" after a clean stop; else let the watchdog stop what is left."""
        if self._watchdog is None:
            return
        with contextlib.suppress(OSError):
            if clean:
                self._tell("done")
            self._watchdog.close()
        self._watchdog = None
        if self._watchdog_proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._watchdog_proc.wait(GRACE + 10)


def watchdog() -> None:
    """The watchdog process: its stdin is a pipe only the demo writes. Registered process
    groups are stopped when the pipe closes without "done", i.e. when the demo died."""
    groups: dict[int, tuple[int, bool]] = {}
    for raw in sys.stdin.buffer:
        words = raw.decode("ascii", "replace").split()
        if words == ["done"]:
            return
        if len(words) == 4 and words[0] == "add":
            groups[int(words[1])] = (int(words[2]), words[3] == "1")
        elif len(words) == 2 and words[0] == "del":
            groups.pop(int(words[1]), None)
    if groups:
        print(f"tasklog demo watchdog: the demo is gone; stopping {sorted(groups)}", flush=True)
        stop_groups(groups, GRACE)


def stop_groups(groups: dict[int, tuple[int, bool]], grace: float) -> bool:
    """Send each process group its first signal (to the leader alone, or to the whole group),
    SIGKILL the groups still alive after `grace` seconds. True once all are gone."""
    alive = {pgid: how for pgid, how in groups.items() if group_alive(pgid)}
    for pgid, (first, leader_only) in alive.items():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if leader_only:
                os.kill(pgid, first)
            else:
                os.killpg(pgid, first)
    if _wait_until(lambda: not any(group_alive(p) for p in alive), grace):
        return True
    for pgid in alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    return _wait_until(lambda: not any(group_alive(p) for p in alive), 10)


@functools.cache
def _prctl() -> Callable[..., int] | None:
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # not Linux: the watchdog alone stops the children
    return prctl


def die_with_parent() -> Callable[[], None] | None:
    """A preexec function asking the kernel to SIGTERM the child when the demo dies (Linux)."""
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the demo died before the line above
            os._exit(1)

    return preexec


# --- pid files --------------------------------------------------------------------------------


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot: a pid plus this names one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _write_pidfile(
    path: Path, pid: int, first: int = signal.SIGTERM, leader_only: bool = False
) -> None:
    start = _start_time(pid) or 0
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{pid} {start} {first} {int(leader_only)}\n")
    tmp.replace(path)


def _read_pidfile(path: Path) -> tuple[int, int, int, bool] | None:
    try:
        pid, start, first, leader_only = (int(x) for x in path.read_text().split())
    except (OSError, ValueError):
        return None
    return pid, start, first, bool(leader_only)


def _is_ours(pgid: int, start: int, *_rest: object) -> bool:
    """Whether the process group a pid file names still runs, and is still that group.

    A live leader must have the recorded start time (else its pid was reused). With the leader
    gone, a live group is still ours: the kernel gives no new process a pid that is still some
    group's id.
    """
    leader_start = _start_time(pgid)
    if leader_start is not None and start and leader_start != start:
        return False
    return group_alive(pgid)


# --- start-up steps ---------------------------------------------------------------------------


def _servers(sup: Supervisor) -> tuple[str, str]:
    database_url = os.environ.get("TASKLOG_DATABASE_URL")
    redis_url = os.environ.get("TASKLOG_REDIS_URL")
    if database_url is None or redis_url is None:
        from tasklog.demo.embedded import EmbeddedPostgres, EmbeddedRedis
    if database_url is None:
        say(f"starting embedded Postgres in {sup.state / 'postgres'}")
        pg = EmbeddedPostgres(sup.state / "postgres")
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
        rd = EmbeddedRedis(sup.state / "redis", preexec=die_with_parent())
        sup.stack.callback(rd.stop)
        rd.start()
        if rd.pid is not None:
            sup.register("redis", rd.pid, signal.SIGTERM)
            sup.stack.callback(sup.unregister, "redis", rd.pid)
        redis_url = rd.url(0)
    else:
        say("using TASKLOG_REDIS_URL")
    return database_url, redis_url


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


# --- small helpers ----------------------------------------------------------------------------


def _last_words(log_path: Path, width: int = 200) -> str:
    """The last line of a child's log, on one line."""
    lines = [line.strip() for line in log_tail(log_path, 5).splitlines() if line.strip()]
    last = for_terminal(lines[-1]).removeprefix("tasklog: ") if lines else "its log is empty"
    return last if len(last) <= width else last[: width - 1] + "…"


def _wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True
