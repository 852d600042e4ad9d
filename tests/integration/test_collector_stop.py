"""The collector as a sidecar: it drains the spool when stopped, and serves its metrics on a port.

In a Kubernetes pod the spool is an emptyDir that goes with the pod: the collector, stopped after
the worker, must store what is left before it exits, and finalize the tasks of a writer that
is gone. Prometheus scrapes it over HTTP there.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from capture_shim import spool
from tasklog.demo.embedded import free_port
from tests.helpers import ProcessFactory, pg_rows, wait_for
from tests.integration.test_collector_faults import (
    assert_exactly_once,
    stored_lines,
    wait_all_stored,
    write_backlog,
)

#: Batches of 100 lines make a 40,000-line backlog take hundreds of commits.
SLOW_DRAIN = {"TASKLOG_BATCH_LINES": "100", "TASKLOG_LOG_LEVEL": "INFO"}


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_sigterm_stores_the_whole_spool_before_exiting(
    procs: ProcessFactory, database_url: str, spool_dir: Path
) -> None:
    ids = write_backlog(spool_dir, 40, 1000)
    # Time enough for 400 batches on a loaded machine (the default, 10 s, is what a stop may
    # take, not what this test is about).
    env = {**SLOW_DRAIN, "TASKLOG_STOP_DRAIN_TIMEOUT": "300"}
    proc = procs.collector(
        database_url=database_url, spool_dir=spool_dir, env=env, ready="following"
    )
    wait_for(lambda: stored_lines(database_url) > 0, message="the first batch stored")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 0
    # Stopped mid-backlog, it still stored every line once and left no spool file behind.
    assert_exactly_once(database_url, ids, 1000)
    assert not list(spool_dir.glob("*" + spool.SUFFIX))
    assert "storing what the spool holds" in proc.log_text()


def test_sigterm_finalizes_a_task_whose_writer_is_gone(
    procs: ProcessFactory, database_url: str, spool_dir: Path
) -> None:
    """A worker killed mid-task leaves a file without `end`: LOST at stop, not after the timeout."""
    pid = _dead_pid()
    start = {"k": spool.START, "v": 1, "t": time.time(), "task_id": "orphan-1", "name": "demo.x"}
    start |= {"host": "h", "pid": pid, "max_lines": 1000}
    data = spool.encode(start) + spool.encode_line(1, spool.STDOUT, "before the kill")
    (spool_dir / spool.file_name("orphan-1", pid, time.time_ns())).write_bytes(data)
    proc = procs.collector(
        database_url=database_url,
        spool_dir=spool_dir,
        env={"TASKLOG_ORPHAN_TIMEOUT": "3600"},
        ready="following",
    )
    wait_for(lambda: stored_lines(database_url) == 1, message="the orphan's line stored")
    assert pg_rows(database_url, "SELECT state FROM tasks")[0][0] != "LOST"  # it waits
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert pg_rows(database_url, "SELECT state FROM tasks") == [("LOST",)]


def test_stop_drain_timeout_zero_stops_at_once_and_loses_nothing(
    procs: ProcessFactory, database_url: str, spool_dir: Path
) -> None:
    ids = write_backlog(spool_dir, 40, 1000)
    env = {**SLOW_DRAIN, "TASKLOG_STOP_DRAIN_TIMEOUT": "0"}
    proc = procs.collector(
        database_url=database_url, spool_dir=spool_dir, env=env, ready="following"
    )
    wait_for(lambda: stored_lines(database_url) > 0, message="the first batch stored")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert stored_lines(database_url) < 40 * 1000  # it did not drain
    # What it left is stored by the next collector on the same spool, exactly once.
    procs.collector(database_url=database_url, spool_dir=spool_dir, ready="following")
    wait_for(lambda: not list(spool_dir.glob("*" + spool.SUFFIX)), timeout=120, message="drained")
    assert_exactly_once(database_url, ids, 1000)


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def _value(text: str, name: str) -> float:
    match = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    assert match, f"{name} not in the metrics"
    return float(match.group(1))


def test_metrics_port_serves_what_the_collector_does(
    procs: ProcessFactory, database_url: str, spool_dir: Path
) -> None:
    port = free_port()
    env = {"TASKLOG_METRICS_PORT": str(port), "TASKLOG_HEARTBEAT_INTERVAL": "0.2"}
    procs.collector(database_url=database_url, spool_dir=spool_dir, env=env, ready="following")
    write_backlog(spool_dir, 3, 50)

    def stored() -> bool:
        return _value(_scrape(port), "tasklog_collector_lines_total") == 150

    wait_for(stored, timeout=30, message="150 lines counted on the metrics port")
    text = _scrape(port)
    assert _value(text, "tasklog_collector_files_done_total") == 3
    assert 'tasklog_collector_up{status="ok"} 1.0' in text
    statvfs = os.statvfs(spool_dir)
    assert _value(text, "tasklog_collector_spool_size_bytes") == statvfs.f_blocks * statvfs.f_frsize
    assert 0 < _value(text, "tasklog_collector_spool_free_bytes")
    assert abs(time.time() - _value(text, "tasklog_collector_heartbeat_timestamp_seconds")) < 30


def test_a_busy_metrics_port_is_one_line(
    procs: ProcessFactory, database_url: str, spool_dir: Path
) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = procs.collector(
            database_url=database_url,
            spool_dir=spool_dir,
            env={"TASKLOG_METRICS_PORT": str(port)},
            ready=None,
        )
        assert proc.wait(timeout=30) == 2
    assert f"TASKLOG_METRICS_PORT: cannot listen on 127.0.0.1:{port}" in proc.log_text()
    assert "Traceback" not in proc.log_text()


def test_a_backlog_in_one_file_drains_without_waiting_for_a_rescan(
    procs: ProcessFactory, database_url: str, spool_dir: Path
) -> None:
    """The next batch is read from other files than those in flight: with a single file, the
    collector lets the batch in flight commit and reads on, rather than sleeping until the
    next rescan (an hour here) or wake-up for each batch of a backlog nothing writes to."""
    ids = write_backlog(spool_dir, 1, 3000)
    env = {
        "TASKLOG_BATCH_LINES": "100",
        "TASKLOG_RESCAN_INTERVAL": "3600",
        "TASKLOG_ORPHAN_TIMEOUT": "3600",
        "TASKLOG_HEARTBEAT_INTERVAL": "3600",
    }
    procs.collector(database_url=database_url, spool_dir=spool_dir, env=env, ready="following")
    # 30 batches; waiting for a wake-up between them would take far longer than this allows.
    wait_all_stored(database_url, spool_dir, 3000, timeout=60)
    assert_exactly_once(database_url, ids, 3000)


def test_files_written_while_it_runs_are_found_by_the_file_watcher_alone(
    procs: ProcessFactory, database_url: str, spool_dir: Path
) -> None:
    """No rescan for an hour: only the file watcher can tell the collector of these files."""
    env = {
        "TASKLOG_RESCAN_INTERVAL": "3600",
        "TASKLOG_ORPHAN_TIMEOUT": "3600",
        "TASKLOG_HEARTBEAT_INTERVAL": "3600",
    }
    procs.collector(database_url=database_url, spool_dir=spool_dir, env=env, ready="following")
    ids = write_backlog(spool_dir, 5, 200)
    wait_all_stored(database_url, spool_dir, 1000, timeout=60)
    assert_exactly_once(database_url, ids, 200)
