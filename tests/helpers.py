"""Test helpers: waiting on conditions, ports, SQL, and real subprocesses that always stop."""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import psycopg
from psycopg.rows import dict_row

from tasklog.core.process import pid_alive
from tasklog.demo.embedded import free_port, group_alive

__all__ = [
    "REPO_ROOT",
    "Proc",
    "ProcessFactory",
    "free_port",
    "pg_rows",
    "pids_alive",
    "socket_addresses",
    "tasklog_cli",
    "wait_for",
    "with_database",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


#: Set by .ci/run ("1" means on, any other value off): a browser test that cannot run fails
#: instead of skipping (REQUIRE_BROWSER), and so does any other test (REQUIRE_TOOLS) unless it
#: is marked `optional` (tests/conftest.py).
REQUIRE_BROWSER = "TASKLOG_REQUIRE_BROWSER"
REQUIRE_TOOLS = "TASKLOG_REQUIRE_TOOLS"


def required(variable: str) -> bool:
    """Whether `variable` (REQUIRE_BROWSER or REQUIRE_TOOLS) is on: "1" means on."""
    return os.environ.get(variable) == "1"


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float = 20,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Poll `predicate` until it returns something truthy, and return that.

    Fails after `timeout` seconds with `message` and the last value seen (or the last
    exception of a type in `ignore`, which count as "not yet").
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
        except ignore as exc:
            last = exc
        else:
            if last:
                return cast(T, last)
        if time.monotonic() >= deadline:
            what = message() if callable(message) else message
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what}; last value: {last!r}"
            )
        time.sleep(interval)


def pg_rows(
    database_url: str,
    sql: str,
    params: Sequence[Any] | Mapping[str, Any] | None = None,
    *,
    dicts: bool = False,
) -> list[Any]:
    """Run one statement in autocommit and return its rows (tuples, or dicts if asked)."""
    with psycopg.connect(database_url, autocommit=True, connect_timeout=10) as conn:
        cur = conn.cursor(row_factory=dict_row) if dicts else conn.cursor()
        cur.execute(sql.encode(), params)
        return cur.fetchall() if cur.description else []


def with_database(url: str, dbname: str) -> str:
    """The same server URL pointing at another database."""
    if "://" not in url:  # a key=value conninfo string
        return psycopg.conninfo.make_conninfo(url, dbname=dbname)
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + urllib.parse.quote(dbname)))


def socket_addresses(pids: Iterable[int]) -> set[str]:
    """The local address of every TCP socket the processes `pids` hold, written as Redis's
    CLIENT LIST writes a client's ``addr`` (``127.0.0.1:50312``, ``[::1]:50312``); Linux only.

    What tells this test's own Redis clients from those of every other process on a shared
    server: a connection is theirs when its client end is one of these sockets."""
    addresses = set()
    for pid in pids:
        inodes = set()
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
        for table in ("tcp", "tcp6"):
            try:
                rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
            except OSError:
                continue
            for row in rows:
                fields = row.split()
                if fields[9] not in inodes:
                    continue
                hex_ip, hex_port = fields[1].split(":")
                raw = bytes.fromhex(hex_ip)  # 32-bit words in host (little-endian) order
                ip = ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))
                port = int(hex_port, 16)
                if isinstance(ip, ipaddress.IPv6Address):
                    addresses.add(f"[{ip}]:{port}")
                    if ip.ipv4_mapped is not None:
                        ip = ip.ipv4_mapped
                addresses.add(f"{ip}:{port}")
    return addresses


_TAIL_LINES = 40


class Proc:
    """A subprocess started by `ProcessFactory`, in a session of its own, logging to a file."""

    def __init__(
        self, name: str, argv: Sequence[str], log_path: Path, popen: subprocess.Popen[bytes]
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.popen = popen

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = _TAIL_LINES) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit and return its code; AssertionError on timeout."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} (pid {self.pid}) still running after {timeout}s; "
                f"log tail:\n{self.log_tail()}"
            ) from None

    def send_signal(self, sig: int, group: bool = False) -> None:
        """Signal the process alone, or its whole process group (e.g. prefork children)."""
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)

    def kill(self, timeout: float = 10) -> None:
        """SIGKILL the process and everything in its group, and wait until they are gone."""
        self.send_signal(signal.SIGKILL, group=True)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)
        # Delivery is asynchronous: the group's other members may take a moment to die.
        deadline = time.monotonic() + timeout
        while group_alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.01)

    def children(self) -> list[int]:
        """Pids of the process's direct children (e.g. prefork pool processes); Linux only."""
        try:
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except OSError:
            return []
        return [int(pid) for pid in text.split()]

    def terminate(self, timeout: float = 10) -> int | None:
        """SIGTERM the process, SIGKILL its group after `timeout` seconds; then kill any
        straggler. Only the main process gets SIGTERM: a Celery worker then shuts its pool
        down itself (warm shutdown), as it would under a careful supervisor."""
        if self.alive:
            self.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # Children the main process left behind (or everyone, on timeout) go too.
        self.kill()
        return self.returncode

    def __repr__(self) -> str:
        state = "alive" if self.alive else f"exited {self.returncode}"
        return f"<Proc {self.name} pid={self.pid} {state}>"


Ready = Callable[[Proc], object] | str | re.Pattern[str] | None


class ProcessFactory:
    """Starts subprocesses for one test and stops every one of them at teardown."""

    def __init__(self, log_dir: Path, base_env: Mapping[str, str] | None = None) -> None:
        self.log_dir = log_dir
        self.procs: list[Proc] = []
        self._counter = itertools.count(1)
        inherited = dict(os.environ if base_env is None else base_env)
        # Whatever points at servers is given per process, never inherited from the runner.
        self.base_env = {k: v for k, v in inherited.items() if not k.startswith("TASKLOG_")}
        self.base_env["PYTHONUNBUFFERED"] = "1"

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        ready: Ready = None,
        timeout: float = 30,
        cwd: Path = REPO_ROOT,
    ) -> Proc:
        """Start `argv`; when `ready` is given, wait until it holds.

        `ready` is a regex searched in the log, or a callable taking the `Proc` and returning
        something truthy once the process is ready.
        """
        number = next(self._counter)
        log_path = self.log_dir / f"{number:02d}-{name}.log"
        full_env = {**self.base_env, **(env or {})}
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
            )
        proc = Proc(name, argv, log_path, popen)
        self.procs.append(proc)
        if ready is not None:
            self._wait_ready(proc, ready, timeout)
        return proc

    def worker(
        self,
        *,
        redis_url: str,
        spool_dir: Path | str,
        pool: str = "prefork",
        concurrency: int = 2,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        timeout: float = 30,
    ) -> Proc:
        """A demo Celery worker (demo.app) with `pool`, ready once it logs "ready."."""
        number = next(self._counter)
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tasklog.demo.app",
            "worker",
            "-P",
            pool,
            "-c",
            str(concurrency),
            "-l",
            "info",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            f"w{number}-{os.getpid()}@%h",
            *args,
        ]
        full_env = {
            "TASKLOG_REDIS_URL": redis_url,
            "TASKLOG_SPOOL_DIR": str(spool_dir),
            **(env or {}),
        }
        return self.start(
            f"worker{number}",
            argv,
            env=full_env,
            ready=re.compile(r"\bready\.$", re.M),
            timeout=timeout,
        )

    def collector(
        self,
        *,
        database_url: str,
        spool_dir: Path | str,
        redis_url: str | None = None,
        host: str = "test-host",
        env: Mapping[str, str] | None = None,
        ready: Ready = None,
        timeout: float = 30,
    ) -> Proc:
        """`python -m tasklog collector`; `ready` as in `start` (the caller knows its sign)."""
        full_env = {
            "TASKLOG_DATABASE_URL": database_url,
            "TASKLOG_SPOOL_DIR": str(spool_dir),
            "TASKLOG_HOST": host,
        }
        if redis_url is not None:
            full_env["TASKLOG_REDIS_URL"] = redis_url
        full_env.update(env or {})
        return self.start(
            "collector",
            [sys.executable, "-m", "tasklog", "collector"],
            env=full_env,
            ready=ready,
            timeout=timeout,
        )

    def stop_all(self, timeout: float = 10) -> None:
        """Stop every process still running, newest first, each within `timeout` seconds."""
        for proc in reversed(self.procs):
            proc.terminate(timeout)

    def report(self) -> str:
        """The log tail of every process, for a failed test's output."""
        parts = []
        for proc in self.procs:
            parts.append(
                f"----- {proc.name} (pid {proc.pid}, exit {proc.returncode}) "
                f"{proc.log_path} -----\n{proc.log_tail()}"
            )
        return "\n".join(parts)

    def _wait_ready(self, proc: Proc, ready: Ready, timeout: float) -> None:
        if isinstance(ready, str):
            ready = re.compile(ready, re.M)
        check: Callable[[Proc], object]
        if isinstance(ready, re.Pattern):
            pattern = ready

            def check(p: Proc) -> object:
                return pattern.search(p.log_text())
        else:
            assert ready is not None
            check = ready

        deadline = time.monotonic() + timeout
        while not check(proc):
            if not proc.alive:
                raise AssertionError(
                    f"{proc.name} exited with code {proc.returncode} before it was ready; "
                    f"log tail:\n{proc.log_tail()}"
                )
            if time.monotonic() >= deadline:
                proc.terminate()
                raise AssertionError(
                    f"{proc.name} not ready after {timeout}s; log tail:\n{proc.log_tail()}"
                )
            time.sleep(0.05)


#: The `tasklog` command as installed (the console script beside this Python), else the module.
TASKLOG = (
    [str(Path(sys.executable).with_name("tasklog"))]
    if Path(sys.executable).with_name("tasklog").exists()
    else [sys.executable, "-m", "tasklog"]
)


def tasklog_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the real `tasklog` command with only the given TASKLOG_* settings; never raises on
    a non-zero exit (the caller asserts on it)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TASKLOG_")}
    full_env.update(env or {})
    return subprocess.run(
        [*TASKLOG, *args],
        env=full_env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
        check=False,
    )


def pids_alive(pids: Sequence[int]) -> list[int]:
    """The pids of `pids` still running (zombies count as gone)."""
    return [pid for pid in pids if pid_alive(pid)]
