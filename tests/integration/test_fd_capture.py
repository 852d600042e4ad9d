"""fd-level capture with real workers: subprocesses, os.write and C code land in the task's lines,
in order with its prints; the worker's own output and the next task stay apart."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

from capture_shim import spool
from tests.helpers import Proc, ProcessFactory, pg_rows, wait_for

Line = tuple[int, str, str]


class Stored:
    """Tasks as the collector stored them in Postgres."""

    def __init__(self, database_url: str, client: Any) -> None:
        self.database_url = database_url
        self.client = client

    def run(self, name: str, *args: Any, timeout: float = 60) -> str:
        """Send a task and wait until it is stored as finished; its id."""
        task_id = str(self.client.send_task(name, args=args).id)
        wait_for(
            lambda: pg_rows(
                self.database_url,
                "SELECT 1 FROM tasks WHERE task_id = %s AND state = 'SUCCESS'",
                (task_id,),
            ),
            timeout=timeout,
            interval=0.1,
            message=f"{name} stored as SUCCESS",
        )
        return task_id

    def lines(self, task_id: str) -> list[Line]:
        return pg_rows(
            self.database_url,
            "SELECT seq, stream, message FROM lines WHERE task_id = %s ORDER BY seq",
            (task_id,),
        )

    def task(self, task_id: str) -> dict[str, Any]:
        (row,) = pg_rows(
            self.database_url, "SELECT * FROM tasks WHERE task_id = %s", (task_id,), dicts=True
        )
        return row  # type: ignore[no-any-return]


def _spooled(spool_dir: Path, client: Any, name: str, *args: Any) -> list[Line]:
    """Send a task to a worker without a collector and read its lines from the spool file."""
    task_id = str(client.send_task(name, args=args).id)

    def finished() -> list[dict[str, Any]] | None:
        for path in spool_dir.glob("*" + spool.SUFFIX):
            records = [json.loads(line) for line in path.read_text().splitlines()]
            if records and records[0].get("task_id") == task_id and records[-1]["k"] == spool.END:
                return records
        return None

    records = wait_for(finished, timeout=30, message=f"{name}'s spool file with its end record")
    return [(r["n"], r["s"], r["m"]) for r in records if r["k"] == spool.LINE]


def _messages(lines: list[Line], stream: str) -> list[str]:
    return [m for _, s, m in lines if s == stream]


def _check_mixed(lines: list[Line]) -> None:
    """demo.fd_mixed, captured at fd level: every write, its stream, its place."""
    assert _messages(lines, "stdout") == [
        "py before",
        "out",
        "os write 1",
        "c printf 42",
        "py after",
    ]
    assert _messages(lines, "stderr") == ["err", "os write 2", "py err"]
    seq = {m: n for n, _, m in lines}
    fd_level = ("out", "err", "os write 1", "os write 2", "c printf 42")
    assert all(seq["py before"] < seq[m] < seq["py after"] for m in fd_level)


def _succeeded(worker: Proc, name: str, task_id: str) -> bool:
    return bool(re.search(rf"Task {re.escape(name)}\[{task_id}\] succeeded", worker.log_text()))


def test_prefork_captures_subprocess_os_write_and_c_output(
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
) -> None:
    procs.collector(
        database_url=database_url, redis_url=redis_url, spool_dir=spool_dir, ready="following"
    )
    # One child process: the task after the burst runs where the burst ran.
    worker = procs.worker(redis_url=redis_url, spool_dir=spool_dir, pool="prefork", concurrency=1)
    stored = Stored(database_url, celery_client)

    mixed = stored.run("demo.fd_mixed")
    lines = stored.lines(mixed)
    _check_mixed(lines)
    assert len(lines) == 8

    burst = stored.run("demo.fd_burst", 20, 100, timeout=120)
    count = 200_000  # 20 MB of 100-byte lines
    row = stored.task(burst)
    assert row["last_seq"] == count + 2 and row["spool_errors"] == 0
    kept = stored.lines(burst)
    assert kept[0][1:] == ("stdout", "burst start")
    assert kept[1][2].startswith("burst 0000001x")
    assert kept[-2][2].startswith(f"burst {count:07d}x")
    assert kept[-1][1:] == ("stdout", "burst end")
    assert row["lines_omitted"] == count + 2 - 1000  # TASKLOG_MAX_LINES keeps head and tail

    after = stored.run("demo.print_lines", 3)
    assert stored.lines(after) == [
        (1, "stdout", "line 1"),
        (2, "stdout", "line 2"),
        (3, "stdout", "line 3"),
    ]

    # The worker's own log lines, written while each task ran, stayed the worker's.
    for name, task_id in (
        ("demo.fd_mixed", mixed),
        ("demo.fd_burst", burst),
        ("demo.print_lines", after),
    ):
        wait_for(
            functools.partial(_succeeded, worker, name, task_id),
            timeout=10,
            message=f"the worker's log line for {name}",
        )
    for task_id in (mixed, burst, after):
        assert not any("succeeded in" in m for _, _, m in stored.lines(task_id))
    assert "os write 1" not in worker.log_text()


def test_prefork_survives_a_lingering_child_and_closed_descriptors(
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
) -> None:
    procs.collector(
        database_url=database_url, redis_url=redis_url, spool_dir=spool_dir, ready="following"
    )
    worker = procs.worker(redis_url=redis_url, spool_dir=spool_dir, pool="prefork", concurrency=1)
    stored = Stored(database_url, celery_client)

    orphan = stored.run("demo.fd_orphan", 3.0)
    next_one = stored.run("demo.print_lines", 2)  # runs while the orphan still sleeps
    lines = stored.lines(orphan)
    assert lines[0][1:] == ("stdout", "orphan started")
    assert lines[-1][1] == "log" and "child process still holds" in lines[-1][2]
    assert stored.lines(next_one) == [(1, "stdout", "line 1"), (2, "stdout", "line 2")]
    # The orphan's late output reaches the worker's own output, and no task.
    wait_for(
        lambda: "orphan-late" in worker.log_text() and "orphan-err" in worker.log_text(),
        timeout=15,
        message="the orphan's output in the worker's log",
    )
    rows = pg_rows(database_url, "SELECT count(*) FROM lines WHERE message LIKE 'orphan-%%'")
    assert rows == [(0,)]

    closed = stored.run("demo.fd_close")
    assert stored.lines(closed) == [
        (1, "stdout", "before close"),
        (2, "stdout", "python still captured"),
    ]
    mixed = stored.run("demo.fd_mixed")
    _check_mixed(stored.lines(mixed))
    wait_for(
        lambda: _succeeded(worker, "demo.fd_mixed", mixed),
        timeout=10,
        message="the worker still logging after a task closed fd 1 and 2",
    )


def test_capture_fd_false_stays_at_python_level(
    procs: ProcessFactory,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
) -> None:
    worker = procs.worker(
        redis_url=redis_url,
        spool_dir=spool_dir,
        pool="prefork",
        concurrency=1,
        env={"TASKLOG_CAPTURE_FD": "false"},
    )
    lines = _spooled(spool_dir, celery_client, "demo.fd_mixed")
    assert _messages(lines, "stdout") == ["py before", "py after"]
    assert _messages(lines, "stderr") == ["py err"]
    wait_for(
        lambda: "os write 1" in worker.log_text(),
        timeout=10,
        message="uncaptured fd output in the worker's log",
    )


def test_threads_pool_stays_at_python_level(
    procs: ProcessFactory,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
) -> None:
    worker = procs.worker(redis_url=redis_url, spool_dir=spool_dir, pool="threads", concurrency=2)
    lines = _spooled(spool_dir, celery_client, "demo.fd_mixed")
    assert _messages(lines, "stdout") == ["py before", "py after"]
    assert _messages(lines, "stderr") == ["py err"]
    wait_for(
        lambda: "c printf 42" in worker.log_text(),
        timeout=10,
        message="uncaptured fd output in the worker's log",
    )
    assert _spooled(spool_dir, celery_client, "demo.print_lines", 2) == [
        (1, "stdout", "line 1"),
        (2, "stdout", "line 2"),
    ]


def test_solo_pool_with_tee_captures_and_echoes(
    procs: ProcessFactory,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
) -> None:
    worker = procs.worker(
        redis_url=redis_url,
        spool_dir=spool_dir,
        pool="solo",
        concurrency=1,
        env={"TASKLOG_TEE": "true"},
    )
    _check_mixed(_spooled(spool_dir, celery_client, "demo.fd_mixed"))
    log = str(
        wait_for(
            lambda: (text := worker.log_text()) and "py err" in text and text,
            timeout=10,
            message="the tee'd output in the worker's log",
        )
    )
    for message in (
        "py before",
        "out",
        "err",
        "os write 1",
        "os write 2",
        "c printf 42",
        "py after",
    ):
        assert re.search(rf"^{re.escape(message)}$", log, re.M), message
