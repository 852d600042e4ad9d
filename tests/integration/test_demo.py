"""The README's first command: `tasklog demo` on a machine with no servers running."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tasklog.demo.embedded import group_alive
from tests.helpers import Proc, ProcessFactory, free_port, pids_alive, wait_for

RUNNING = "running; press Ctrl-C"


@pytest.mark.slow
def test_demo_runs_everything_shows_the_logs_and_stops_cleanly(
    procs: ProcessFactory, pg_state_dir: Path
) -> None:
    port = free_port()
    # No TASKLOG_DATABASE_URL / TASKLOG_REDIS_URL: the demo must start embedded servers.
    env = {"TASKLOG_API_PORT": str(port), "HOME": os.environ.get("HOME", "/root")}
    demo = procs.start(
        "demo",
        [sys.executable, "-m", "tasklog", "demo", "--state-dir", str(pg_state_dir)],
        env=env,
        ready="running; press Ctrl-C",
        timeout=120,
    )
    out = demo.log_text()
    assert "starting embedded Postgres" in out and "starting embedded Redis" in out
    assert f"open http://127.0.0.1:{port}/tasklog/" in out
    assert "Quick task done" in out
    assert "FAILURE (Exception: Demo failure)" in out
    assert "About to fail" in out

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/tasklog/api/tasks/", timeout=5) as r:
        assert r.status == 200
    # The demo launcher is on under `tasklog demo` only (off by default elsewhere).
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/tasklog/launch/", timeout=5) as r:
        assert r.status == 200

    children = [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == demo.pid]
    assert children, "the demo should have started its components as children"
    demo.send_signal(signal.SIGINT)
    assert demo.wait(60) == 0
    assert "stopping" in demo.log_text()
    wait_for(
        lambda: not pids_alive(children), timeout=20, message="the demo left its components running"
    )
    assert not (pg_state_dir / "postgres" / "pgdata" / "postmaster.pid").exists(), (
        "the demo left its embedded Postgres running"
    )


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


# --- the demo as a supervisor ------------------------------------------------------------------


def _demo(
    procs: ProcessFactory, state: Path, env: dict[str, str], ready: str | None = RUNNING
) -> Proc:
    return procs.start(
        "demo",
        [sys.executable, "-m", "tasklog", "demo", "--no-tasks", "--state-dir", str(state)],
        env={"HOME": os.environ.get("HOME", "/root"), **env},
        ready=ready,
        timeout=120,
    )


def _registered(state: Path) -> dict[str, int]:
    """Name -> process group of what the demo registered in its pid files."""
    out = {}
    for path in (state / "pids").glob("*.pid"):
        if path.stem != "demo":
            out[path.stem] = int(path.read_text().split()[0])
    return out


def _descendants(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (ppid := _parent(int(entry))) is not None:
            parents[int(entry)] = ppid
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def _everything(demo: Proc, state: Path) -> tuple[set[int], set[int]]:
    """(every process below the demo, every process group it registered)."""
    return _descendants(demo.pid), set(_registered(state).values())


def _all_gone(pids: set[int], groups: set[int]) -> bool:
    return not pids_alive(sorted(pids)) and not any(group_alive(g) for g in groups)


def _given_servers(database_url: str, redis_url: str) -> dict[str, str]:
    return {
        "TASKLOG_DATABASE_URL": database_url,
        "TASKLOG_REDIS_URL": redis_url,
        "TASKLOG_API_PORT": str(free_port()),
    }


@pytest.mark.slow
def test_sigterm_stops_everything_the_demo_started(
    procs: ProcessFactory, pg_state_dir: Path
) -> None:
    demo = _demo(procs, pg_state_dir, {"TASKLOG_API_PORT": str(free_port())})
    pids, groups = _everything(demo, pg_state_dir)
    assert set(_registered(pg_state_dir)) == {"postgres", "redis", "collector", "worker", "api"}
    postmaster = _registered(pg_state_dir)["postgres"]
    assert postmaster not in pids, "pg_ctl detaches Postgres: only its registration finds it"

    demo.send_signal(signal.SIGTERM)
    assert demo.wait(60) == 0
    assert "stopping" in demo.log_text()
    wait_for(lambda: _all_gone(pids, groups), timeout=10, message="everything stopped")
    assert _registered(pg_state_dir) == {}
    assert not (pg_state_dir / "pids" / "demo.pid").exists()


def test_sighup_stops_everything_a_second_demo_refuses_the_api_has_the_launch_route(
    procs: ProcessFactory, pg_state_dir: Path, database_url: str, redis_url: str
) -> None:
    env = _given_servers(database_url, redis_url)
    demo = _demo(procs, pg_state_dir, env)
    pids, groups = _everything(demo, pg_state_dir)
    registered = _registered(pg_state_dir)
    assert set(registered) == {"collector", "worker", "api"}
    # The demo turns the launch route on for its own API; its worker has no database login.
    assert b"TASKLOG_API_DEMO_LAUNCH=true" in _environ(registered["api"])
    worker_env = b"\0".join(_environ(registered["worker"]))
    assert b"TASKLOG_DATABASE_URL" not in worker_env and b"TASKLOG_REDIS_URL" in worker_env
    port = env["TASKLOG_API_PORT"]
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/tasklog/launch/", headers={"Accept": "text/html"}
    )
    with urllib.request.urlopen(request, timeout=5) as r:
        assert r.status == 200

    # A second demo on the same state directory refuses, and leaves the first alone.
    line = _one_line_error(_run_demo(pg_state_dir, _given_servers(database_url, redis_url)))
    assert line == (
        f"tasklog: another tasklog demo (pid {demo.pid}) runs on {pg_state_dir}; "
        "stop it first, or use another --state-dir"
    )
    assert demo.alive and (pg_state_dir / "pids" / "demo.pid").exists()
    assert _registered(pg_state_dir) == registered

    demo.send_signal(signal.SIGHUP)
    assert demo.wait(60) == 0
    wait_for(lambda: _all_gone(pids, groups), timeout=10, message="everything stopped")


@pytest.mark.slow
def test_sigkill_leaves_nothing_running_and_the_demo_starts_again(
    procs: ProcessFactory, pg_state_dir: Path
) -> None:
    port = str(free_port())
    demo = _demo(procs, pg_state_dir, {"TASKLOG_API_PORT": port})
    pids, groups = _everything(demo, pg_state_dir)
    assert len(groups) == 5

    demo.send_signal(signal.SIGKILL)
    demo.wait(10)
    # The children get SIGTERM from the kernel at once; the watchdog stops the rest
    # (Postgres, which pg_ctl detached) and SIGKILLs what is left after its grace.
    wait_for(lambda: _all_gone(pids, groups), timeout=30, message="nothing left running")

    again = _demo(procs, pg_state_dir, {"TASKLOG_API_PORT": port})
    assert "left running" not in again.log_text(), "the watchdog had already stopped everything"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/tasklog/healthz", timeout=5) as r:
        assert r.status == 200
    pids, groups = _everything(again, pg_state_dir)
    again.send_signal(signal.SIGINT)
    assert again.wait(60) == 0
    wait_for(lambda: _all_gone(pids, groups), timeout=10, message="everything stopped")


@pytest.mark.slow
def test_what_a_killed_demo_left_running_is_stopped_at_the_next_start(
    procs: ProcessFactory, pg_state_dir: Path
) -> None:
    demo = _demo(procs, pg_state_dir, {"TASKLOG_API_PORT": str(free_port())})
    watchdog = [p for p in _descendants(demo.pid) if b"watchdog" in _cmdline(p)]
    postmaster = _registered(pg_state_dir)["postgres"]
    # Demo and watchdog both SIGKILLed: the kernel stops the demo's children, nobody stops
    # the Postgres that pg_ctl detached.
    for pid in (*watchdog, demo.pid):
        os.kill(pid, signal.SIGKILL)
    demo.wait(10)
    wait_for(lambda: not pids_alive(watchdog), timeout=10, message="the watchdog killed")
    assert pids_alive([postmaster]) == [postmaster]

    again = _demo(procs, pg_state_dir, {"TASKLOG_API_PORT": str(free_port())})
    assert f"stopping the postgres (pid {postmaster}) left running by an earlier demo" in (
        again.log_text()
    )
    assert not group_alive(postmaster)
    again.send_signal(signal.SIGTERM)
    assert again.wait(60) == 0


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tasklog: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


def _run_demo(state: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TASKLOG_")}
    return subprocess.run(
        [sys.executable, "-m", "tasklog", "demo", "--no-tasks", "--state-dir", str(state)],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_busy_api_port_is_one_line(pg_state_dir: Path, database_url: str, redis_url: str) -> None:
    env = _given_servers(database_url, redis_url)
    port = int(env["TASKLOG_API_PORT"])
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", port))
        taken.listen()
        line = _one_line_error(_run_demo(pg_state_dir, env))
    assert f"port {port} on 127.0.0.1 is in use (TASKLOG_API_PORT)" in line
    assert _registered(pg_state_dir) == {}, "nothing was started"


def test_a_child_dying_at_start_up_is_one_line_naming_it(
    pg_state_dir: Path, database_url: str, redis_url: str
) -> None:
    # A collector setting only the collector reads: it exits at once, the others start.
    env = {**_given_servers(database_url, redis_url), "TASKLOG_BATCH_LINES": "nope"}
    line = _one_line_error(_run_demo(pg_state_dir, env))
    log = pg_state_dir / "logs" / "collector.log"
    assert line.startswith("tasklog: the collector exited with code 2 during start-up (")
    assert "TASKLOG_BATCH_LINES" in line and line.endswith(f"; its log: {log}")
    # Whatever had started was stopped.
    assert _registered(pg_state_dir) == {}
    spool = f"TASKLOG_SPOOL_DIR={pg_state_dir / 'spool'}".encode()
    assert [p for p in _pids() if spool in _environ(p)] == []


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _environ(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []


def test_a_killed_watchdog_does_not_stop_the_demo_from_stopping_everything(
    procs: ProcessFactory, pg_state_dir: Path, database_url: str, redis_url: str
) -> None:
    demo = _demo(procs, pg_state_dir, _given_servers(database_url, redis_url))
    pids, groups = _everything(demo, pg_state_dir)
    (watchdog,) = [p for p in pids if b"watchdog" in _cmdline(p)]
    os.kill(watchdog, signal.SIGKILL)
    wait_for(lambda: not pids_alive([watchdog]), timeout=10, message="the watchdog gone")

    demo.send_signal(signal.SIGTERM)
    assert demo.wait(60) == 0
    assert "the watchdog process is gone" in demo.log_text()
    wait_for(lambda: _all_gone(pids, groups), timeout=10, message="everything stopped")
    assert _registered(pg_state_dir) == {}
