"""A primary failover mid-ingest: the primary stopped with `pg_ctl stop -m immediate`, its
standby promoted, the collector on the libpq multi-host URL. Every line sent is stored exactly
once on the new primary, with a synchronous standby and with an asynchronous one that missed
the last commits (TASKLOG_FAILOVER_GRACE on: finished spool files are kept until a standby
confirms their commit, and re-read when the new primary's offsets are behind)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from capture_shim import spool
from tests.helpers import Proc, ProcessFactory, pg_rows, wait_for
from tests.replication import ReplicatedPostgres, wait_caught_up
from tests.spooling import LINES, Sender

pytestmark = pytest.mark.slow

#: Small batches: many commits, so that the stop lands between two of them.
COLLECTOR_ENV = {"TASKLOG_BATCH_LINES": "1000", "TASKLOG_LOG_LEVEL": "INFO"}


def stored(url: str) -> int:
    return int(pg_rows(url, "SELECT count(*) FROM lines")[0][0])


def counts(url: str, sender: Sender) -> dict[str, int]:
    """sent / stored / lost / duplicated, and tasks not SUCCESS with all their lines."""
    rows = pg_rows(
        url,
        "SELECT t.task_id, t.state, t.line_count, count(l.seq), count(DISTINCT l.seq), "
        "count(*) FILTER (WHERE l.message <> t.task_id || ' line ' || l.seq) "
        "FROM tasks t LEFT JOIN lines l USING (task_id) GROUP BY 1, 2, 3",
    )
    by_task = {row[0]: row[1:] for row in rows}
    distinct = sum(row[3] for row in by_task.values())
    return {
        "sent": sender.total,
        "stored": sum(row[2] for row in by_task.values()),
        "lost": sender.total - distinct,
        "duplicated": sum(row[2] - row[3] for row in by_task.values()),
        "wrong_text": sum(row[4] for row in by_task.values()),
        "unfinished": sum(
            1
            for task, row in by_task.items()
            if row[0] != "SUCCESS" or row[1] != sender.sent.get(task)
        ),
        "unknown_tasks": len(set(by_task) - set(sender.sent)),
    }


def failover_mid_ingest(
    pair: ReplicatedPostgres,
    procs: ProcessFactory,
    spool_dir: Path,
    *,
    before_stop: Callable[[], None],
    env: dict[str, str],
    idle: bool = False,
) -> tuple[Sender, Proc]:
    """Tasks stored, then more sent while the primary is stopped and the standby promoted,
    then more after; returns once the new primary holds them all (or a deadline passes)."""
    sender = Sender(spool_dir)
    collector = procs.collector(
        database_url=pair.url(),
        spool_dir=spool_dir,
        ready="following",
        env={**COLLECTOR_ENV, **env},
    )
    # Before: finished tasks and four still running when the primary goes.
    sender.tasks("before", 20)
    for r in range(4):
        sender.begin(f"running-{r}", LINES // 2)
    first = sender.total
    wait_for(lambda: stored(pair.primary_url()) >= first, timeout=180, message=f"{first} stored")
    before_stop()

    # During: the running tasks end, more are sent, and the primary stops mid-way.
    for r in range(4):
        sender.finish(f"running-{r}", LINES // 2)
    sender.tasks("during", 40)
    # Mid-ingest; `idle`: once all is stored, the collector waiting for more.
    some = sender.total if idle else first + (sender.total - first) // 4
    wait_for(
        lambda: stored(pair.primary_url()) >= some,
        timeout=180,
        interval=0.005,
        message=f"{some} stored",
    )
    pair.primary.stop(mode="immediate")
    pair.promote()
    promoted = time.monotonic()

    # After: the new primary takes the rest.
    sender.tasks("after", 20)
    new = pair.standby_url()

    def complete() -> bool:
        found = counts(new, sender)
        return found["lost"] == 0 and found["unfinished"] == 0

    try:
        wait_for(complete, timeout=180, interval=0.2, message="every line on the new primary")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; counts: {counts(new, sender)}") from None
    print(
        f"\n{sender.total} lines sent; {first} stored before, primary stopped at "
        f"{some}+; all on the new primary {time.monotonic() - promoted:.1f}s after promotion"
    )
    return sender, collector


def test_synchronous_standby_promoted_mid_ingest_keeps_every_line_once(
    replicated_pg: Callable[..., ReplicatedPostgres], procs: ProcessFactory, spool_dir: Path
) -> None:
    pair = replicated_pg(synchronous=True)
    sender, collector = failover_mid_ingest(
        pair, procs, spool_dir, before_stop=lambda: None, env={}
    )
    found = counts(pair.standby_url(), sender)
    assert found == {
        "sent": sender.total,
        "stored": sender.total,
        "lost": 0,
        "duplicated": 0,
        "wrong_text": 0,
        "unfinished": 0,
        "unknown_tasks": 0,
    }
    assert collector.alive
    # Synchronous: nothing to keep, each finished file went once stored.
    wait_for(
        lambda: not list(spool_dir.glob("*" + spool.SUFFIX)),
        timeout=120,
        message="every spool file deleted",
    )


@pytest.mark.parametrize("when", ["mid-ingest", "idle"])
def test_asynchronous_standby_that_missed_commits_promoted_keeps_every_line_once(
    replicated_pg: Callable[..., ReplicatedPostgres],
    procs: ProcessFactory,
    spool_dir: Path,
    when: str,
) -> None:
    pair = replicated_pg(synchronous=False)

    def partition() -> None:
        # The standby has what was stored so far, and nothing from now on: every commit of
        # the next phase is one a failover loses.
        wait_caught_up(pair)
        pair.detach()

    sender, collector = failover_mid_ingest(
        pair,
        procs,
        spool_dir,
        before_stop=partition,
        env={"TASKLOG_FAILOVER_GRACE": "600"},
        idle=when == "idle",
    )
    found = counts(pair.standby_url(), sender)
    assert found == {
        "sent": sender.total,
        "stored": sender.total,
        "lost": 0,
        "duplicated": 0,
        "wrong_text": 0,
        "unfinished": 0,
        "unknown_tasks": 0,
    }
    assert collector.alive
    assert "re-reading them from the stored offsets" in collector.log_text()
    # What the old primary alone had stored was kept, then read again: counted once.
    print(f"counts on the new primary: {found}")


def test_asynchronous_standby_without_the_grace_period_loses_what_it_missed(
    replicated_pg: Callable[..., ReplicatedPostgres], procs: ProcessFactory, spool_dir: Path
) -> None:
    """The documented cost of TASKLOG_FAILOVER_GRACE=0 with asynchronous replication: the
    lines of the files finished in the standby's lag are gone with them."""
    pair = replicated_pg(synchronous=False)

    def partition() -> None:
        wait_caught_up(pair)
        pair.detach()

    sender = Sender(spool_dir)
    procs.collector(
        database_url=pair.url(), spool_dir=spool_dir, ready="following", env=COLLECTOR_ENV
    )
    sender.tasks("before", 5)
    wait_for(lambda: stored(pair.primary_url()) >= sender.total, timeout=180, message="stored")
    partition()
    sender.tasks("missed", 5)
    wait_for(
        lambda: (
            stored(pair.primary_url()) >= sender.total
            and not list(spool_dir.glob("*" + spool.SUFFIX))
        ),
        timeout=180,
        message="all stored on the old primary and deleted",
    )
    pair.primary.stop(mode="immediate")
    pair.promote()
    found = counts(pair.standby_url(), sender)
    assert found["lost"] == 5 * LINES and found["duplicated"] == 0


def test_kept_files_go_once_the_standby_confirms_their_commit(
    replicated_pg: Callable[..., ReplicatedPostgres], procs: ProcessFactory, spool_dir: Path
) -> None:
    """With the grace period on and a standby streaming, a finished file waits for the
    standby's flush (milliseconds), not for the grace period (here 600 s)."""
    pair = replicated_pg(synchronous=False)
    procs.collector(
        database_url=pair.url(),
        spool_dir=spool_dir,
        ready="following",
        env={**COLLECTOR_ENV, "TASKLOG_FAILOVER_GRACE": "600"},
    )
    sender = Sender(spool_dir)
    sender.tasks("confirmed", 10)
    wait_for(
        lambda: (
            stored(pair.primary_url()) >= sender.total
            and not list(spool_dir.glob("*" + spool.SUFFIX))
        ),
        timeout=180,
        message="every file stored, confirmed by the standby and deleted",
    )
    wait_for(
        lambda: pg_rows(pair.primary_url(), "SELECT count(*) FROM spool_files") == [(0,)],
        message="the deleted files' offsets rows forgotten",
    )
