"""The demo's supervisor: it starts the demo's processes, ties their lives to its own and
stops them.

- Ctrl-C, SIGTERM and SIGHUP stop everything it started, in order, then the demo exits 0.
- Nothing it started outlives it, even when it is killed with SIGKILL: each child gets
  SIGTERM from the kernel when the demo dies (PR_SET_PDEATHSIG), and a watchdog process of
  its own, holding the only read end of a pipe the demo writes, sees the pipe close and
  stops every process group the demo registered, the embedded Postgres (which pg_ctl
  detaches) included: SIGTERM (SIGINT, a fast shutdown, for Postgres), SIGKILL after a grace.
- Each process it starts has a pid file under STATE/pids; what a killed demo left running on
  the same state directory is found through them and stopped before anything starts.
- A child that exits stops the demo with one line naming it, its last words and its log.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

from tasklog.core.errors import TasklogError
from tasklog.core.process import pid_alive
from tasklog.core.terminal import for_terminal
from tasklog.demo.embedded import group_alive, log_tail

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: Seconds a child has between SIGTERM and SIGKILL. A Celery worker's warm shutdown would wait
#: for a running task (the long demo task takes 30 s): the demo does not.
GRACE = 10.0
PR_SET_PDEATHSIG = 1
# What signal.signal returns and takes.
_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None
#: The watchdog process's program (`watchdog`).
_WATCHDOG = "from tasklog.demo.supervisor import watchdog; watchdog()"
#: Stop order for what an earlier demo left running: the programs before their servers.
_LEFTOVER_ORDER = ("api", "worker", "collector", "redis", "postgres")


def say(message: str) -> None:
    """One line of the demo's own, prefixed "tasklog demo:"."""
    # A closed terminal (SIGHUP) must not stop the demo from stopping its children.
    with contextlib.suppress(OSError):
        print(f"tasklog demo: {message}", flush=True)


class ChildExited(TasklogError):
    """A process the demo started has exited."""


class Stopped(Exception):
    """A stop signal arrived; raised at the next safe point, never inside a signal handler."""


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
        if exc_type is Stopped or self._stop_signal is not None:
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
        """Raise Stopped if a stop signal came, ChildExited if a child has exited."""
        if self._stop_signal is not None:
            raise Stopped(signal.Signals(self._stop_signal).name)
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
                    [sys.executable, "-c", _WATCHDOG],
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
    if wait_until(lambda: not any(group_alive(p) for p in alive), grace):
        return True
    for pgid in alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    return wait_until(lambda: not any(group_alive(p) for p in alive), 10)


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


# --- small helpers ----------------------------------------------------------------------------


def _last_words(log_path: Path, width: int = 200) -> str:
    """The last line of a child's log, on one line."""
    lines = [line.strip() for line in log_tail(log_path, 5).splitlines() if line.strip()]
    last = for_terminal(lines[-1]).removeprefix("tasklog: ") if lines else "its log is empty"
    return last if len(last) <= width else last[: width - 1] + "…"


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True
