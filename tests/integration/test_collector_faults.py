"""The collector under faults: kill -9 mid-backlog, Postgres stopped or absent, a worker child
killed mid-task. Every line is stored exactly once, whatever happens."""

from __future__ import annotations

import functools
import os
import signal
import time
from pathlib import Path
from typing import Any, NamedTuple

from capture_shim import spool
from capture_shim.capture import TaskCapture
from capture_shim.config import ShimConfig
from collector.tail import SpoolDir
from tasklog.demo.embedded_postgres import EmbeddedPostgres
from tests.helpers import Proc, ProcessFactory, pg_rows, wait_for

#: Small batches make many commits, so that a kill lands between two of them.
SMALL_BATCHES = {"TASKLOG_BATCH_LINES": "1000", "TASKLOG_LOG_LEVEL": "INFO"}


def write_backlog(spool_dir: Path, tasks: int, lines: int, prefix: str = "task") -> list[str]:
    """Spool files exactly as a worker's shim writes them, each task finished."""
    config = ShimConfig(
        enabled=True,
        spool_dir=str(spool_dir),
        max_lines=2 * lines,
        max_line_bytes=16384,
        record_args=False,
    )
    ids = []
    for t in range(tasks):
        task_id = f"{prefix}-{t}"
        cap = TaskCapture(
            config, task_id, {"task_id": task_id, "name": "backlog", "max_lines": config.max_lines}
        )
        for i in range(1, lines + 1):
            cap.write(spool.STDOUT if i % 10 else spool.STDERR, f"{task_id} line {i}\n")
        cap.finish("SUCCESS")
        ids.append(task_id)
    return ids


def stored_at_least(database_url: str, count: int) -> bool:
    return stored_lines(database_url) >= count


def stored_lines(url: str) -> int:
    return int(pg_rows(url, "SELECT count(*) FROM lines")[0][0])


def wait_all_stored(url: str, spool_dir: Path, total: int, timeout: float = 120) -> None:
    """Every line in Postgres and every spool file deleted (its end stored)."""

    def done() -> bool:
        return stored_lines(url) >= total and not list(spool_dir.glob("*" + spool.SUFFIX))

    wait_for(
        done, timeout=timeout, interval=0.1, message=f"{total} lines stored", ignore=(OSError,)
    )


def assert_exactly_once(url: str, ids: list[str], lines: int) -> None:
    per_task = pg_rows(
        url,
        "SELECT task_id, count(*), count(DISTINCT seq), min(seq), max(seq) "
        "FROM lines GROUP BY task_id",
    )
    assert {row[0]: row[1:] for row in per_task} == {i: (lines, lines, 1, lines) for i in ids}
    # Each seq holds its own line, on its own stream.
    assert pg_rows(
        url,
        "SELECT count(*) FROM lines WHERE message <> task_id || ' line ' || seq "
        "OR stream <> CASE WHEN seq % 10 = 0 THEN 'stderr' ELSE 'stdout' END",
    ) == [(0,)]
    assert pg_rows(
        url, "SELECT state, line_count, last_seq, count(*) FROM tasks GROUP BY 1, 2, 3"
    ) == [("SUCCESS", lines, lines, len(ids))]
    assert pg_rows(url, "SELECT count(*) FROM spool_files WHERE NOT ended") == [(0,)]


def spool_file(spool_dir: Path, task_id: str) -> Path:
    """The one spool file of a task's run."""
    (path,) = spool_dir.glob(f"{spool.safe_name(task_id)}.*{spool.SUFFIX}")
    return path


def keep_at_kill(path: Path, keep_dir: Path) -> Path:
    """A hard link to a spool file, taken just before its writer is killed: the same inode,
    so after the kill it holds exactly what the file held then, even once the collector has
    deleted the file's name."""
    keep_dir.mkdir(exist_ok=True)
    os.link(path, keep_dir / path.name)
    return keep_dir / path.name


class Held(NamedTuple):
    """What a spool file holds: (seq, stream, message) of each line record, and its end."""

    lines: list[tuple[int, str, str]]
    end: dict[str, Any] | None


def held_in(keep_dir: Path) -> dict[str, Held]:
    """What each spool file in `keep_dir` holds, per task id, read by the collector's own
    reader (`collector.tail`), not by a parser of the test's."""
    reader = SpoolDir(keep_dir, {})
    reader.scan()
    found: dict[str, Held] = {}
    task_of: dict[str, str] = {}
    while batch := reader.read_batch(max_lines=10_000, max_bytes=1 << 24):
        for chunk in batch.chunks:
            assert chunk.corrupt == 0, chunk.state.name
            if chunk.start is not None:
                task_of[chunk.state.name] = chunk.start["task_id"]
            held = found.setdefault(task_of[chunk.state.name], Held([], None))
            held.lines.extend((line.seq, line.stream, line.message) for line in chunk.lines)
            if chunk.end is not None:
                found[task_of[chunk.state.name]] = held._replace(end=chunk.end)
        reader.commit(batch)
    return found


def stored_of(url: str, task_id: str) -> list[tuple[int, str, str]]:
    return pg_rows(
        url,
        "SELECT seq, stream, message FROM lines WHERE task_id = %s ORDER BY seq",
        (task_id,),
    )


def collector(procs: ProcessFactory, url: str, spool_dir: Path, **env: str) -> Proc:
    return procs.collector(
        database_url=url, spool_dir=spool_dir, ready="following", env={**SMALL_BATCHES, **env}
    )


def test_backlog_ingest_rate(procs: ProcessFactory, database_url: str, spool_dir: Path) -> None:
    tasks, lines = 200, 500
    ids = write_backlog(spool_dir, tasks, lines)
    started = time.monotonic()
    procs.collector(database_url=database_url, spool_dir=spool_dir, ready="following")
    wait_all_stored(database_url, spool_dir, tasks * lines)
    elapsed = time.monotonic() - started
    assert_exactly_once(database_url, ids, lines)
    print(
        f"\ncollector ingested a backlog of {tasks} tasks x {lines} lines = {tasks * lines} "
        f"lines in {elapsed:.2f}s (from process start): {tasks * lines / elapsed:,.0f} lines/s"
    )


def test_kill_9_mid_backlog_stores_every_line_once(
    procs: ProcessFactory, database_url: str, spool_dir: Path
) -> None:
    tasks, lines = 100, 500
    total = tasks * lines
    ids = write_backlog(spool_dir, tasks, lines)
    at_kill = []
    for round_ in range(1, 4):
        proc = collector(procs, database_url, spool_dir)
        target = total * round_ // 4
        wait_for(
            functools.partial(stored_at_least, database_url, target),
            timeout=60,
            interval=0.01,
            message=f"{target} lines stored",
        )
        proc.kill()  # SIGKILL: no clean shutdown, a batch may be half sent
        at_kill.append(stored_lines(database_url))
    assert 0 < at_kill[0] < total, at_kill  # the kills did land mid-backlog
    collector(procs, database_url, spool_dir)
    wait_all_stored(database_url, spool_dir, total)
    assert_exactly_once(database_url, ids, lines)
    print(f"\nkill -9 after {at_kill} of {total} lines stored; all stored exactly once")


def test_postgres_stopped_and_killed_during_ingest(
    procs: ProcessFactory, embedded_pg: EmbeddedPostgres, spool_dir: Path
) -> None:
    url = embedded_pg.url("tasklog")
    tasks, lines = 60, 500
    total = tasks * lines
    ids = write_backlog(spool_dir, tasks, lines)
    proc = collector(procs, url, spool_dir)

    wait_for(
        lambda: stored_lines(url) >= total // 4,
        timeout=60,
        interval=0.01,
        message="a quarter stored",
    )
    embedded_pg.stop()
    wait_for(
        lambda: "Postgres unavailable" in proc.log_text(),
        timeout=30,
        message="the collector noticing",
    )
    embedded_pg.start()
    wait_for(
        lambda: stored_lines(url) >= total // 2,
        timeout=60,
        interval=0.01,
        message="half stored",
        ignore=(OSError,),
    )
    embedded_pg.kill()  # the postmaster SIGKILLed: open transactions die unanswered
    embedded_pg.start()

    wait_all_stored(url, spool_dir, total)
    assert proc.alive
    assert_exactly_once(url, ids, lines)
    assert "Postgres reachable again" in proc.log_text()


def test_collector_waits_for_postgres_at_start(
    procs: ProcessFactory, embedded_pg: EmbeddedPostgres, spool_dir: Path
) -> None:
    url = embedded_pg.url("tasklog")
    embedded_pg.stop()
    ids = write_backlog(spool_dir, 10, 50)
    proc = procs.collector(
        database_url=url, spool_dir=spool_dir, ready="Postgres unavailable.*retrying"
    )
    assert proc.alive and "following" not in proc.log_text()
    embedded_pg.start()
    wait_all_stored(url, spool_dir, 10 * 50, timeout=60)
    assert_exactly_once(url, ids, 50)


def test_worker_child_killed_mid_task_fails_as_worker_lost_with_its_lines(
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
    tmp_path: Path,
) -> None:
    """The stored lines are exactly those the task's spool file held at the kill (none lost,
    none twice), and its end is the one the worker's main process wrote for the child."""
    procs.collector(
        database_url=database_url,
        spool_dir=spool_dir,
        redis_url=redis_url,
        ready="following",
        env={"TASKLOG_ORPHAN_TIMEOUT": "2"},
    )
    procs.worker(redis_url=redis_url, spool_dir=spool_dir, pool="prefork", concurrency=1)
    task_id = celery_client.send_task(
        "demo.demo_long_task", kwargs={"duration": 60, "steps": 120}
    ).id

    wait_for(
        lambda: len(stored_of(database_url, task_id)) >= 3,
        timeout=30,
        message="three lines stored",
    )
    ((pid, state),) = pg_rows(
        database_url, "SELECT pid, state FROM tasks WHERE task_id = %s", (task_id,)
    )
    assert state in ("STARTED", "PROGRESS")
    keep_at_kill(spool_file(spool_dir, task_id), tmp_path / "at-kill")
    os.kill(pid, signal.SIGKILL)

    # The worker's main process is alive: Celery's verdict (FAILURE, WorkerLostError) is the
    # run's end, written for the child (capture_shim.verdict), not LOST.
    wait_for(
        lambda: (
            pg_rows(
                database_url, "SELECT state, exc_type FROM tasks WHERE task_id = %s", (task_id,)
            )
            == [("FAILURE", "WorkerLostError")]
        ),
        timeout=60,
        message="task FAILURE WorkerLostError",
    )
    # The link holds the child's lines up to the kill, then the end its main process wrote.
    held = held_in(tmp_path / "at-kill")
    assert list(held) == [task_id]
    kept = stored_of(database_url, task_id)
    assert kept == held[task_id].lines
    end = held[task_id].end
    assert end is not None and end["state"] == "FAILURE"
    assert kept[0] == (1, "stdout", "Processing for 60 seconds")
    assert kept[1:] == [(i + 1, "stdout", f"step {i}/120") for i in range(1, len(kept))]
    ((message, count),) = pg_rows(
        database_url, "SELECT exc_message, line_count FROM tasks WHERE task_id = %s", (task_id,)
    )
    assert "SIGKILL" in message and count == len(kept)
    wait_for(
        lambda: not list(spool_dir.glob("*" + spool.SUFFIX)),
        timeout=10,
        message="the task's spool file removed",
    )


def test_file_stored_before_a_crash_is_deleted_on_restart(
    procs: ProcessFactory, database_url: str, spool_dir: Path, tmp_path: Path
) -> None:
    ids = write_backlog(spool_dir, 1, 5)
    (path,) = spool_dir.glob("*" + spool.SUFFIX)
    os.link(path, tmp_path / "kept")  # the same inode, to put back afterwards
    proc = collector(procs, database_url, spool_dir)
    wait_all_stored(database_url, spool_dir, 5)
    wait_for(
        lambda: pg_rows(database_url, "SELECT count(*) FROM spool_files") == [(0,)],
        message="the offsets row forgotten",
    )
    proc.terminate()
    # What kill -9 between the commit and the unlink leaves: the file, and its row saying
    # it was stored to the end.
    st = os.stat(tmp_path / "kept")
    pg_rows(
        database_url,
        'INSERT INTO spool_files (host, file, inode, "offset", task_id, seq_base, max_seq, '
        "head_lines, tail_lines, ended) VALUES ('test-host', %s, %s, %s, %s, 0, 5, 10, 10, "
        "true)",
        (path.name, st.st_ino, st.st_size, ids[0]),
    )
    os.link(tmp_path / "kept", path)

    collector(procs, database_url, spool_dir)
    wait_for(lambda: not path.exists(), timeout=20, message="the stored file deleted")
    wait_for(
        lambda: pg_rows(database_url, "SELECT count(*) FROM spool_files") == [(0,)],
        message="its offsets row forgotten",
    )
    assert_exactly_once(database_url, ids, 5)


def test_late_retry_end_does_not_override_the_final_state(
    procs: ProcessFactory, database_url: str, spool_dir: Path
) -> None:
    # With countdown=0 the retried run can start (threads pool) before the first run has
    # written its end record; the collector may then store them in this order.
    config = ShimConfig(
        enabled=True,
        spool_dir=str(spool_dir),
        max_lines=1000,
        max_line_bytes=16384,
        record_args=False,
    )
    task_id = "retried-task"

    def start(retries: int) -> TaskCapture:
        return TaskCapture(
            config,
            task_id,
            {"task_id": task_id, "name": "demo.retry_task", "retries": retries, "max_lines": 1000},
        )

    first = start(0)
    first.write(spool.STDOUT, "attempt 0\n")
    collector(procs, database_url, spool_dir)
    lines_q = "SELECT seq, message FROM lines WHERE task_id = %s ORDER BY seq"
    wait_for(
        lambda: pg_rows(database_url, lines_q, (task_id,)) == [(1, "attempt 0")],
        message="the first attempt's line",
    )
    second = start(1)
    second.write(spool.STDOUT, "attempt 1\n")
    second.finish("SUCCESS")
    state_q = "SELECT state FROM tasks WHERE task_id = %s"
    wait_for(
        lambda: pg_rows(database_url, state_q, (task_id,)) == [("SUCCESS",)],
        message="the second attempt's SUCCESS",
    )
    first.finish("RETRY")
    wait_for(lambda: not list(spool_dir.glob("*" + spool.SUFFIX)), message="both files stored")
    assert pg_rows(database_url, lines_q, (task_id,)) == [(1, "attempt 0"), (2, "attempt 1")]
    assert pg_rows(database_url, state_q, (task_id,)) == [("SUCCESS",)]


def test_threads_worker_killed_with_tasks_in_flight_loses_each_with_its_lines(
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
    tmp_path: Path,
) -> None:
    """SIGKILL of a threads-pool worker: one process ran every task, each in its own spool
    file; each task becomes LOST with exactly the lines its file held at the kill."""
    procs.collector(
        database_url=database_url,
        spool_dir=spool_dir,
        redis_url=redis_url,
        ready="following",
        env={"TASKLOG_ORPHAN_TIMEOUT": "2"},
    )
    worker = procs.worker(redis_url=redis_url, spool_dir=spool_dir, pool="threads", concurrency=3)
    ids = [
        celery_client.send_task("demo.print_lines", kwargs={"count": 10_000, "delay": 0.05}).id
        for _ in range(3)
    ]

    wait_for(
        lambda: all(len(stored_of(database_url, task_id)) >= 3 for task_id in ids),
        timeout=30,
        message="three lines of each task stored",
    )
    pids = {row[0] for row in pg_rows(database_url, "SELECT pid FROM tasks")}
    assert pids == {worker.pid}  # the threads pool: every task in the main process
    for task_id in ids:
        keep_at_kill(spool_file(spool_dir, task_id), tmp_path / "at-kill")
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(10)

    wait_for(
        lambda: pg_rows(database_url, "SELECT DISTINCT state FROM tasks") == [("LOST",)],
        timeout=30,
        message="every task LOST",
    )
    held = held_in(tmp_path / "at-kill")
    assert sorted(held) == sorted(ids)
    for task_id in ids:
        kept = stored_of(database_url, task_id)
        assert kept == held[task_id].lines and held[task_id].end is None, task_id
        assert kept == [(n, "stdout", f"line {n}") for n in range(1, len(kept) + 1)], task_id
        ((message, count),) = pg_rows(
            database_url,
            "SELECT exc_message, line_count FROM tasks WHERE task_id = %s",
            (task_id,),
        )
        assert f"worker process {worker.pid} died" in message and count == len(kept)
    wait_for(
        lambda: not list(spool_dir.glob("*" + spool.SUFFIX)),
        timeout=10,
        message="the lost tasks' spool files removed",
    )
