"""The README's first command: `tasklog demo` on a machine with no servers running."""

from __future__ import annotations

import os
import signal
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import ProcessFactory, free_port, pids_alive, wait_for


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
