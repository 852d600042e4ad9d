"""Process faults around the collector and the worker: kill -9 at random moments while workers
keep writing, Postgres down (health says so, no crash loop), a worker's warm shutdown mid-task,
two collectors on one spool dir, two hosts writing to one database.

Builds on tests/integration/test_collector_faults.py (its backlog writer and checks)."""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from capture_shim import spool
from capture_shim.capture import TaskCapture
from capture_shim.config import ShimConfig
from tasklog.demo.embedded_postgres import EmbeddedPostgres
from tests.helpers import ProcessFactory, pg_rows, wait_for
from tests.integration.test_collector_faults import (
    SMALL_BATCHES,
    assert_exactly_once,
    stored_lines,
    wait_all_stored,
    write_backlog,
)


class Writer(threading.Thread):
    """Workers that keep writing while the collector is killed: `tasks` tasks of `lines`
    lines, `open_at_once` of them in flight, lines written a few at a time, as
    test_collector_faults' backlog (message "<id> line <n>", every 10th on stderr)."""

    def __init__(
        self,
        spool_dir: Path,
        tasks: int,
        lines: int,
        prefix: str,
        open_at_once: int = 8,
        step: int = 25,
        pace: float = 0.002,
    ) -> None:
        super().__init__(name=f"writer-{prefix}", daemon=True)
        self.config = ShimConfig(
            enabled=True,
            spool_dir=str(spool_dir),
            max_lines=2 * lines,
            max_line_bytes=16384,
            record_args=False,
        )
        self.ids = [f"{prefix}-{t}" for t in range(tasks)]
        self.lines, self.open_at_once, self.step, self.pace = lines, open_at_once, step, pace
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            todo = list(self.ids)
            running: list[tuple[str, TaskCapture, list[int]]] = []
            while (todo or running) and not self.stop.is_set():
                while todo and len(running) < self.open_at_once:
                    task_id = todo.pop(0)
                    cap = TaskCapture(
                        self.config,
                        task_id,
                        {"task_id": task_id, "name": "writer", "max_lines": self.config.max_lines},
                    )
                    running.append((task_id, cap, [0]))
                for task_id, cap, done in list(running):
                    for i in range(done[0] + 1, min(done[0] + self.step, self.lines) + 1):
                        cap.write(spool.STDOUT if i % 10 else spool.STDERR, f"{task_id} line {i}\n")
                        done[0] = i
                    if done[0] == self.lines:
                        cap.finish("SUCCESS")
                        running.remove((task_id, cap, done))
                self.stop.wait(self.pace)  # workers print at their own pace, not all at once
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def join_checked(self, timeout: float = 60) -> None:
        self.join(timeout)
        assert not self.is_alive(), "the writer did not finish"
        if self.error is not None:
            raise self.error


def peak_rss_kb(pid: int) -> int:
    """The process's peak resident set size so far (VmHWM), 0 if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    return int(match.group(1)) if match else 0


@pytest.fixture
def writers() -> Iterator[list[Writer]]:
    started: list[Writer] = []
    yield started
    for writer in started:
        writer.stop.set()
        writer.join(10)


# -- 1. kill -9 at random moments ------------------------------------------------------------


@pytest.mark.slow
def test_collector_killed_at_random_moments_while_workers_write(
    procs: ProcessFactory, database_url: str, spool_dir: Path, writers: list[Writer]
) -> None:
    seed = int(os.environ.get("TASKLOG_TEST_SEED") or time.time_ns() % 2**31)
    print(f"\nrandom kill delays: TASKLOG_TEST_SEED={seed}")
    rng = random.Random(seed)
    tasks, lines, kills, waiting = 150, 400, 10, 100
    total = (tasks + waiting) * lines
    # A backlog waiting before the first start, then workers writing through every kill.
    backlog = write_backlog(spool_dir, waiting, lines, prefix="backlog")
    at_kill: list[tuple[float, int]] = []
    peak_kb = 0
    # How long a start takes on this machine now (imports, migrate, offsets): a loaded machine
    # takes seconds, and kills drawn from a fixed range would all land before any commit.
    started = time.monotonic()
    procs.collector(
        database_url=database_url, spool_dir=spool_dir, ready="following", env=SMALL_BATCHES
    ).kill()
    startup = time.monotonic() - started
    # The writing lasts as long as the kills take on average (~300 rounds of 8 tasks x 25
    # lines): a collector that keeps up with the writers is still mid-ingest at most kills.
    pace = kills * (0.3 + startup + 1.5) / 2 / 300
    writer = Writer(spool_dir, tasks, lines, prefix="live", pace=pace)
    writers.append(writer)
    writer.start()
    for _ in range(kills):
        proc = procs.collector(database_url=database_url, spool_dir=spool_dir, env=SMALL_BATCHES)
        # From spawn, not from "ready": some kills land in start-up (migrate, load offsets).
        delay = rng.uniform(0.3, startup + 1.5)
        time.sleep(delay)  # the fault injection itself, not a wait for a condition
        peak_kb = max(peak_kb, peak_rss_kb(proc.pid))
        proc.kill()
        at_kill.append((round(delay, 2), stored_lines(database_url)))
    writer.join_checked()
    procs.collector(
        database_url=database_url, spool_dir=spool_dir, ready="following", env=SMALL_BATCHES
    )
    wait_all_stored(database_url, spool_dir, total)
    assert_exactly_once(database_url, backlog + writer.ids, lines)
    counts = [n for _, n in at_kill]
    assert counts == sorted(counts)
    mid = sum(1 for n in counts if 0 < n < total)
    assert mid >= kills // 2, at_kill
    print(
        f"{kills} kill -9 (delay s, lines stored at the kill): {at_kill}; {mid} mid-ingest; "
        f"{total} lines of {tasks + waiting} tasks stored exactly once, seq 1..{lines}; "
        f"collector peak RSS {peak_kb / 1024:.0f} MiB"
    )


# -- 2. Postgres down: health and metrics say so, the process stays ---------------------------


_UP = re.compile(r'^tasklog_collector_up\{status="([^"]*)"\} (\S+)$', re.M)


def _up(metrics_file: Path) -> tuple[str, float] | None:
    try:
        match = _UP.search(metrics_file.read_text())
    except FileNotFoundError:
        return None
    return (match.group(1), float(match.group(2))) if match else None


@pytest.mark.slow
def test_collector_health_while_postgres_is_down(
    procs: ProcessFactory,
    embedded_pg: EmbeddedPostgres,
    spool_dir: Path,
    tmp_path: Path,
    writers: list[Writer],
) -> None:
    url = embedded_pg.url("tasklog")
    metrics_file = tmp_path / "collector.prom"
    env = {
        **SMALL_BATCHES,
        "TASKLOG_METRICS_FILE": str(metrics_file),
        "TASKLOG_HEARTBEAT_INTERVAL": "0.2",
    }
    embedded_pg.stop()
    first = write_backlog(spool_dir, 10, 200, prefix="before")
    proc = procs.collector(
        database_url=url, spool_dir=spool_dir, env=env, ready="Postgres unavailable.*retrying"
    )
    pid = proc.pid
    assert wait_for(lambda: _up(metrics_file), message="metrics written") == (
        "waiting for postgres",
        0.0,
    )
    embedded_pg.start()
    wait_for(lambda: _up(metrics_file) == ("ok", 1.0), timeout=30, message="up 1 after start")
    wait_all_stored(url, spool_dir, 10 * 200)

    # Down again mid-ingest, for longer than a few backoff steps, while workers keep writing.
    writer = Writer(spool_dir, 40, 200, prefix="during", pace=0.01)
    writers.append(writer)
    writer.start()
    wait_for(lambda: stored_lines(url) > 10 * 200, timeout=30, message="ingest resumed")
    embedded_pg.stop()
    down_at = time.monotonic()
    wait_for(
        lambda: _up(metrics_file) == ("waiting for postgres", 0.0),
        timeout=30,
        message="up 0 while Postgres is down",
    )
    writer.join_checked()
    outage = 25.0  # the fault's length: tens of seconds, the backoff reaches its 10 s cap
    time.sleep(max(0.0, outage - (time.monotonic() - down_at)))
    assert proc.alive and proc.pid == pid
    assert _up(metrics_file) == ("waiting for postgres", 0.0)
    embedded_pg.start()
    wait_all_stored(url, spool_dir, 10 * 200 + 40 * 200, timeout=60)
    wait_for(lambda: _up(metrics_file) == ("ok", 1.0), timeout=30, message="up 1 again")

    assert proc.alive and proc.pid == pid  # never restarted, never crash-looped
    assert_exactly_once(url, first + writer.ids, 200)
    log = proc.log_text()
    assert log.count("Postgres unavailable") == 2  # one warning per outage, not per retry
    assert log.count("Postgres reachable again") >= 1
    assert "Traceback" not in log
    ((stats,),) = pg_rows(url, "SELECT stats FROM collectors")
    assert stats["status"] == "ok" and stats["store_failures"] >= 1
    print(
        f"\nPostgres down at start and for {outage:.0f}s mid-ingest: one collector pid {pid} "
        f"throughout, {stats['store_failures']} failed commits retried, "
        f"{stats['lines']} lines stored exactly once"
    )


# -- 3. a worker's warm shutdown mid-task ------------------------------------------------------


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_worker_warm_shutdown_mid_task_keeps_every_line(
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
    pool: str,
) -> None:
    procs.collector(
        database_url=database_url, spool_dir=spool_dir, redis_url=redis_url, ready="following"
    )
    worker = procs.worker(redis_url=redis_url, spool_dir=spool_dir, pool=pool, concurrency=1)
    steps = 10
    result = celery_client.send_task("demo.demo_long_task", kwargs={"duration": 3, "steps": steps})
    q = "SELECT seq, stream, message FROM lines WHERE task_id = %s ORDER BY seq"
    wait_for(
        lambda: len(pg_rows(database_url, q, (result.id,))) >= 3,
        timeout=30,
        message="the task running, lines stored",
    )
    worker.send_signal(signal.SIGTERM)  # the main process only: Celery's warm shutdown
    assert worker.wait(30) == 0
    assert result.get(timeout=10) == "done"  # the task ran to its end
    wait_for(
        lambda: (
            pg_rows(database_url, "SELECT state FROM tasks WHERE task_id = %s", (result.id,))
            == [("SUCCESS",)]
        ),
        message="SUCCESS stored",
    )
    wait_for(lambda: not list(spool_dir.glob("*" + spool.SUFFIX)), message="spool file stored")
    expected = [
        "Processing for 3 seconds",
        *(f"step {i}/{steps}" for i in range(1, steps + 1)),
        "done",
    ]
    assert pg_rows(database_url, q, (result.id,)) == [
        (i, "stdout", m) for i, m in enumerate(expected, 1)
    ]
    assert "Warm shutdown" in worker.log_text()


# -- 6. two collectors ------------------------------------------------------------------------


def test_second_collector_on_the_same_spool_dir_refuses(
    procs: ProcessFactory, database_url: str, spool_dir: Path
) -> None:
    ids = write_backlog(spool_dir, 30, 200)
    first = procs.collector(
        database_url=database_url, spool_dir=spool_dir, ready="following", env=SMALL_BATCHES
    )
    second = procs.collector(database_url=database_url, spool_dir=spool_dir, env=SMALL_BATCHES)
    code = second.wait(30)
    assert code != 0
    message = second.log_text().strip()
    assert message == (
        f"tasklog: another collector (pid {first.pid}) already follows "
        f"{spool_dir}; run one collector per spool directory"
    )
    more = write_backlog(spool_dir, 10, 200, prefix="later")
    wait_all_stored(database_url, spool_dir, 40 * 200)
    assert_exactly_once(database_url, ids + more, 200)
    assert first.alive
    print(f"\nsecond collector exited {code}: {message}")


def test_two_hosts_two_spool_dirs_one_database(
    procs: ProcessFactory, database_url: str, redis_url: str, tmp_path: Path, celery_client: Any
) -> None:
    hosts = {"host-a": "qa", "host-b": "qb"}
    workers = {}
    for host, queue in hosts.items():
        directory = tmp_path / f"spool-{host}"
        directory.mkdir()
        procs.collector(
            database_url=database_url,
            spool_dir=directory,
            redis_url=redis_url,
            host=host,
            ready="following",
        )
        workers[host] = procs.worker(
            redis_url=redis_url,
            spool_dir=directory,
            pool="prefork",
            concurrency=2,
            env={"TASKLOG_HOST": host},
            args=["-Q", queue],
        )
    per_host, lines = 15, 60
    sent = {
        host: [
            celery_client.send_task(
                "demo.print_lines",
                args=(lines,),
                kwargs={"text": f"{host} {k}", "stderr_every": 7},
                queue=queue,
            ).id
            for k in range(per_host)
        ]
        for host, queue in hosts.items()
    }
    everything = [i for ids in sent.values() for i in ids]
    wait_for(
        lambda: (
            pg_rows(
                database_url,
                "SELECT count(*) FROM tasks WHERE state = 'SUCCESS' AND task_id = ANY(%s)",
                (everything,),
            )
            == [(len(everything),)]
        ),
        timeout=60,
        message="every task of both hosts stored",
    )
    for host, ids in sent.items():
        rows = pg_rows(
            database_url,
            "SELECT task_id, host, worker, line_count FROM tasks WHERE task_id = ANY(%s)",
            (ids,),
        )
        assert {r[1] for r in rows} == {host}
        argv = workers[host].argv
        name = argv[argv.index("-n") + 1].split("@")[0]
        assert all(r[2].startswith(name + "@") for r in rows)
        for k, task_id in enumerate(ids):
            assert pg_rows(
                database_url,
                "SELECT seq, stream, message FROM lines WHERE task_id = %s ORDER BY seq",
                (task_id,),
            ) == [
                (i, "stderr" if i % 7 == 0 else "stdout", f"{host} {k} {i}")
                for i in range(1, lines + 1)
            ]
    assert pg_rows(database_url, "SELECT count(*) FROM lines") == [(len(everything) * lines,)]
    assert pg_rows(database_url, "SELECT count(*) FROM tasks") == [(len(everything),)]
    wait_for(
        lambda: (
            pg_rows(database_url, "SELECT host, spool_dir FROM collectors ORDER BY 1")
            == [(h, str(tmp_path / f"spool-{h}")) for h in sorted(hosts)]
        ),
        message="both collectors' heartbeats",
    )
    wait_for(
        lambda: pg_rows(database_url, "SELECT count(*) FROM spool_files") == [(0,)],
        message="both hosts' offsets rows forgotten",
    )
