"""Every way a Celery task ends, and every way it logs, stored as Celery says (issue 24).

Real workers of tests/semantics_app.py (prefork and solo, where the way applies), a real
collector, real Redis. Each test compares what tasklog stored with what Celery's own result
backend says, and checks that the task's lines were kept.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from tasklog.core.constants import FAILURE, IGNORED, LOST, REJECTED, RETRY, REVOKED, SUCCESS
from tests.helpers import Proc, ProcessFactory, pg_rows, wait_for
from tests.integration.test_collector_faults import held_in, stored_of

#: Generous: two cores shared with other work, and a worker forks its pool first.
DEADLINE = 60


@pytest.fixture
def client(redis_url: str) -> Iterator[Celery]:
    app = Celery("semantics-client", broker=redis_url, backend=redis_url, set_as_current=False)
    try:
        yield app
    finally:
        app.close()


def start_collector(procs: ProcessFactory, database_url: str, spool_dir: Path) -> Proc:
    return procs.collector(
        database_url=database_url,
        spool_dir=spool_dir,
        ready="following",
        # A run whose writer died is finalized soon (a crashed worker's run is LOST).
        env={"TASKLOG_ORPHAN_TIMEOUT": "1", "TASKLOG_RESCAN_INTERVAL": "0.5"},
    )


def start_worker(
    procs: ProcessFactory,
    redis_url: str,
    spool_dir: Path,
    pool: str,
    name: str = "w",
    keep_dir: Path | None = None,
) -> Proc:
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tests.semantics_app",
        "worker",
        "-P",
        pool,
        "-c",
        "2",
        "-l",
        "info",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-n",
        f"{name}-{pool}-{os.getpid()}@%h",
    ]
    env = {"TASKLOG_REDIS_URL": redis_url, "TASKLOG_SPOOL_DIR": str(spool_dir)}
    if keep_dir is not None:  # where a task that kills its worker links its spool file first
        env["TASKLOG_TEST_KEEP_DIR"] = str(keep_dir)
    return procs.start(
        f"worker-{name}-{pool}", argv, env=env, ready=re.compile(r"\bready\.$", re.M), timeout=60
    )


def task_row(database_url: str, task_id: str) -> tuple[Any, ...] | None:
    rows = pg_rows(
        database_url,
        "SELECT state, exc_type, task_name FROM tasks WHERE task_id = %s",
        (task_id,),
    )
    return rows[0] if rows else None


def wait_state(database_url: str, task_id: str, state: str, exc_type: str | None = None) -> None:
    def reached() -> bool:
        row = task_row(database_url, task_id)
        return row is not None and row[0] == state and (exc_type is None or row[1] == exc_type)

    wait_for(
        reached,
        DEADLINE,
        0.1,
        lambda: f"{task_id}: {state} {exc_type or ''} stored; is {task_row(database_url, task_id)}",
    )


def messages(database_url: str, task_id: str) -> list[str]:
    rows = pg_rows(
        database_url, "SELECT message FROM lines WHERE task_id = %s ORDER BY seq", (task_id,)
    )
    return [m for (m,) in rows]


def lines(database_url: str, task_id: str) -> list[tuple[str, str | None, str]]:
    return pg_rows(
        database_url,
        "SELECT stream, level, message FROM lines WHERE task_id = %s ORDER BY seq",
        (task_id,),
    )


def runs(database_url: str, task_id: str) -> list[str]:
    rows = pg_rows(
        database_url, "SELECT state FROM task_runs WHERE task_id = %s ORDER BY run", (task_id,)
    )
    return [s for (s,) in rows]


def celery_state(client: Celery, task_id: str, wanted: str) -> str:
    """Celery's own state of the task, once it is `wanted` (or whatever it is at the deadline)."""
    result = client.AsyncResult(task_id)
    deadline = time.monotonic() + DEADLINE
    while result.state != wanted and time.monotonic() < deadline:
        time.sleep(0.1)
    return str(result.state)


def wait_line(database_url: str, task_id: str, text: str) -> None:
    wait_for(
        lambda: text in messages(database_url, task_id),
        DEADLINE,
        0.1,
        lambda: f"{text!r} stored; lines: {messages(database_url, task_id)}",
    )


# -- ways a task ends, in the task's own process ------------------------------------------------


@pytest.mark.parametrize("pool", ["prefork", "solo"])
def test_every_ending_in_the_tasks_own_process_is_stored_as_celery_says(
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    client: Celery,
    pool: str,
) -> None:
    start_collector(procs, database_url, spool_dir)
    start_worker(procs, redis_url, spool_dir, pool)
    sent = {
        name: client.send_task(f"sem.{name}").id
        for name in ("ok", "boom", "retry", "ignore", "reject", "replace")
    }
    expected = {
        "ok": (SUCCESS, None, SUCCESS),
        "boom": (FAILURE, "ValueError", FAILURE),
        "retry": (SUCCESS, None, SUCCESS),
        "ignore": (IGNORED, None, None),  # Celery stores nothing more: STARTED stays
        "reject": (FAILURE, "Reject", FAILURE),  # Reject(requeue=False): Celery's FAILURE
        "replace": (SUCCESS, None, SUCCESS),  # the replacing task runs under the same id
    }
    for name, (state, exc_type, celery) in expected.items():
        task_id = sent[name]
        wait_state(database_url, task_id, state, exc_type)
        if celery is not None:
            assert celery_state(client, task_id, celery) == celery, name
    assert messages(database_url, sent["ok"]) == [f"ok {sent['ok']} printed"]
    assert f"boom {sent['boom']} before" in messages(database_url, sent["boom"])
    assert messages(database_url, sent["retry"]) == [
        f"retry {sent['retry']} attempt 0",
        f"retry {sent['retry']} attempt 1",
    ]
    assert runs(database_url, sent["retry"]) == [RETRY, SUCCESS]
    assert messages(database_url, sent["ignore"]) == [f"ignore {sent['ignore']} before"]
    assert messages(database_url, sent["reject"]) == [f"reject {sent['reject']} before"]
    assert messages(database_url, sent["replace"]) == [
        f"replace {sent['replace']} before",
        f"ok {sent['replace']} printed",
    ]
    # Every delivery is its own run: the replaced run and the one that replaced it.
    assert runs(database_url, sent["replace"]) == [IGNORED, SUCCESS]


def test_a_soft_time_limit_is_the_tasks_own_failure(
    procs: ProcessFactory, database_url: str, redis_url: str, spool_dir: Path, client: Celery
) -> None:
    start_collector(procs, database_url, spool_dir)
    start_worker(procs, redis_url, spool_dir, "prefork")
    task_id = client.send_task("sem.soft").id
    wait_state(database_url, task_id, FAILURE, "SoftTimeLimitExceeded")
    assert celery_state(client, task_id, FAILURE) == FAILURE
    assert messages(database_url, task_id) == [
        f"soft {task_id} before",
        f"soft {task_id} caught the soft limit",
    ]


# -- ways a task ends that its own process cannot tell (prefork) ---------------------------------


def test_a_hard_time_limit_is_stored_as_celerys_time_limit_failure(
    procs: ProcessFactory, database_url: str, redis_url: str, spool_dir: Path, client: Celery
) -> None:
    start_collector(procs, database_url, spool_dir)
    start_worker(procs, redis_url, spool_dir, "prefork")
    task_id = client.send_task("sem.hard").id
    wait_state(database_url, task_id, FAILURE, "TimeLimitExceeded")
    assert celery_state(client, task_id, FAILURE) == FAILURE
    assert client.AsyncResult(task_id).result.__class__.__name__ == "TimeLimitExceeded"
    assert messages(database_url, task_id) == [f"hard {task_id} before"]


@pytest.mark.parametrize("sig", ["TERM", "KILL"])
def test_revoke_with_terminate_is_stored_revoked(
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    client: Celery,
    sig: str,
) -> None:
    start_collector(procs, database_url, spool_dir)
    start_worker(procs, redis_url, spool_dir, "prefork")
    task_id = client.send_task("sem.sleeper").id
    wait_line(database_url, task_id, f"sleeper {task_id} started")
    client.control.revoke(task_id, terminate=True, signal=sig)
    wait_state(database_url, task_id, REVOKED, "TaskRevokedError")
    assert celery_state(client, task_id, REVOKED) == REVOKED
    assert messages(database_url, task_id) == [f"sleeper {task_id} started"]
    # Stored once and for all: the run is not LOST later when the collector sees its writer gone.
    assert runs(database_url, task_id) == [REVOKED]


def test_a_worker_process_lost_mid_task_is_celerys_worker_lost_failure(
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    client: Celery,
    tmp_path: Path,
) -> None:
    start_collector(procs, database_url, spool_dir)
    keep_dir = tmp_path / "at-kill"
    keep_dir.mkdir()
    start_worker(procs, redis_url, spool_dir, "prefork", keep_dir=keep_dir)
    task_id = client.send_task("sem.lost").id
    wait_state(database_url, task_id, FAILURE, "WorkerLostError")
    assert celery_state(client, task_id, FAILURE) == FAILURE
    assert messages(database_url, task_id) == [f"lost {task_id} before"]
    # Exactly the lines the spool file held at the kill (a hard link the task took just
    # before it), then the end the worker's main process wrote for the killed child.
    held = held_in(keep_dir)
    assert list(held) == [task_id]
    assert stored_of(database_url, task_id) == held[task_id].lines
    end = held[task_id].end
    assert end is not None and end["state"] == FAILURE


# -- runs that never started -----------------------------------------------------------------


@pytest.mark.parametrize("pool", ["prefork", "solo"])
def test_a_task_revoked_or_expired_before_it_starts_appears_revoked(
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    client: Celery,
    pool: str,
) -> None:
    start_collector(procs, database_url, spool_dir)
    worker = start_worker(procs, redis_url, spool_dir, pool)
    revoked = "revoked-before-start-" + pool
    client.control.revoke(revoked)
    wait_for(
        lambda: "revoked" in worker.log_text().lower() or _revoked_known(client, revoked),
        DEADLINE,
        0.1,
        "the worker knows the revoked id",
    )
    client.send_task("sem.ok", task_id=revoked)
    past = datetime.now(UTC) - timedelta(minutes=1)
    expired = client.send_task("sem.ok", expires=past).id
    wait_state(database_url, revoked, REVOKED, "TaskRevokedError")
    wait_state(database_url, expired, REVOKED, "TaskRevokedError")
    for task_id in (revoked, expired):
        assert celery_state(client, task_id, REVOKED) == REVOKED
        assert task_row(database_url, task_id)[2] == "sem.ok"  # type: ignore[index]
        assert messages(database_url, task_id) == []


def _revoked_known(client: Celery, task_id: str) -> bool:
    replies = client.control.inspect(timeout=1).revoked() or {}
    return any(task_id in ids for ids in replies.values())


# -- redeliveries --------------------------------------------------------------------------------


def test_a_rejection_with_requeue_then_its_redelivery_keep_both_outcomes(
    procs: ProcessFactory, database_url: str, redis_url: str, spool_dir: Path, client: Celery
) -> None:
    start_collector(procs, database_url, spool_dir)
    start_worker(procs, redis_url, spool_dir, "prefork")
    task_id = client.send_task("sem.reject_once").id
    wait_state(database_url, task_id, SUCCESS)
    assert celery_state(client, task_id, SUCCESS) == SUCCESS
    assert messages(database_url, task_id) == [
        f"reject_once {task_id} delivery 1",
        f"reject_once {task_id} delivery 2",
    ]
    assert runs(database_url, task_id) == [REJECTED, SUCCESS]


def test_an_acks_late_task_of_a_crashed_worker_is_lost_then_redelivered(
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    client: Celery,
    tmp_path: Path,
) -> None:
    start_collector(procs, database_url, spool_dir)
    keep_dir = tmp_path / "at-kill"
    keep_dir.mkdir()
    first = start_worker(procs, redis_url, spool_dir, "prefork", name="first", keep_dir=keep_dir)
    task_id = client.send_task("sem.crash").id
    wait_for(lambda: not first.alive, DEADLINE, 0.1, "the first worker crashed")
    wait_state(database_url, task_id, LOST)
    # The lost run's lines are exactly what its spool file held at the kill (a hard link the
    # task took just before it): none lost, none twice, and no end in it.
    held = held_in(keep_dir)
    assert list(held) == [task_id] and held[task_id].end is None
    assert stored_of(database_url, task_id) == held[task_id].lines
    assert held[task_id].lines == [(1, "stdout", f"crash {task_id} delivery 1")]
    start_worker(procs, redis_url, spool_dir, "prefork", name="second")
    wait_state(database_url, task_id, SUCCESS)
    assert celery_state(client, task_id, SUCCESS) == SUCCESS
    assert messages(database_url, task_id) == [
        f"crash {task_id} delivery 1",
        f"crash {task_id} delivery 2",
    ]
    assert runs(database_url, task_id) == [LOST, SUCCESS]


# -- every way of logging, once ----------------------------------------------------------------


@pytest.mark.parametrize("pool", ["prefork", "solo", "threads"])
def test_every_logging_path_is_stored_once_with_its_level(
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    client: Celery,
    pool: str,
) -> None:
    start_collector(procs, database_url, spool_dir)
    start_worker(procs, redis_url, spool_dir, pool)
    task_id = client.send_task("sem.logs").id
    wait_state(database_url, task_id, SUCCESS)
    stored = lines(database_url, task_id)
    expected = [
        ("log", "WARNING", "task logger"),
        ("log", "INFO", "celery logger"),
        ("log", "ERROR", "plain logger"),
        ("log", "INFO", "alone logger"),
        ("stdout", None, "print"),
        ("stdout", None, "sys.stdout"),
    ]
    if pool != "threads":  # fd-level output is captured where one task owns the process
        expected.append(("stdout", None, "fd 1"))
    for stream, level, what in expected:
        found = [(s, lv) for s, lv, m in stored if m.endswith(f"logs {task_id} {what}")]
        assert found == [(stream, level)], f"{what}: {found} in {stored}"
    assert len(stored) == len(expected), stored
