"""Two batches on the collector's two connections never wait on each other in a circle.

The collector commits batch N on one connection while batch N+1 is written on the other, and
N+1 commits only after N. If N+1 could take a lock that N still needs (a retried task's row,
or `lines` itself while N makes a new day's partition), N would wait on Postgres for N+1 while
N+1 waits in the collector for N: a circle Postgres cannot see, and the collector stopped for
good, storing nothing more. On real Postgres, with that very interleaving forced.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from collector import retention
from collector.batch import Batch
from collector.ports import After
from collector.store import Store
from collector.stored import Stored
from collector.tail import SpoolDir
from tests.helpers import pg_rows, wait_for
from tests.integration.test_hostile_tasks import DAY, end, good_task, line, start, write

pytestmark = pytest.mark.asyncio(loop_scope="session")

LIMITS = (10_000, 1 << 24)


def activity(url: str, app: str) -> list[tuple[str, str | None]]:
    """(state, wait_event_type) of each backend of `app` in this test's database."""
    return [
        (state, wait)
        for state, wait in pg_rows(
            url,
            "SELECT state, wait_event_type FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = %s",
            (app,),
        )
    ]


async def test_a_retry_whose_first_run_needs_a_new_partition(
    database_url: str, spool_dir: Path
) -> None:
    """Run 1 of a task dates its lines ten days back (a new partition), run 2 is today's, in
    the batch after. While another session holds `lines` (so run 1's partition waits), run 2
    does not begin: it would hold the task's row and `lines`, and run 1 would wait for it
    forever. Both commit once the other session lets go, each run with its lines."""
    old = time.time() - 10 * DAY
    day = retention.partition_name(datetime.fromtimestamp(old, UTC).date())
    assert day not in partitions(database_url), "the old day's partition must not exist yet"

    first_file = write(
        spool_dir,
        "retried",
        start("retried", t=old) + line(1, "run 1", t=old) + end("RETRY", t=old),
        ns=1,
    )
    reader = SpoolDir(spool_dir, {})
    reader.scan()
    first = reader.read_batch(*LIMITS)
    # Read by a reader of its own: the pipeline's read-ahead now holds a later run back while
    # an earlier one is in flight, and the store must not depend on that.
    elsewhere = spool_dir / "elsewhere"
    elsewhere.mkdir()
    second_file = write(elsewhere, "retried", start("retried") + line(1, "run 2") + end(), ns=2)
    other_reader = SpoolDir(elsewhere, {})
    other_reader.scan()
    second = other_reader.read_batch(*LIMITS)
    assert _files(first) == [first_file.name] and len(_files(second)) == 1

    async with Store(database_url, "host-a") as a, Store(database_url, "host-b") as b:
        # Both connections have stored a task today, as in a running collector.
        for store in (a, b):
            write(spool_dir, f"warm-{store.host}", good_task(f"warm-{store.host}"))
            reader.scan()
            warm = reader.read_batch(*LIMITS, {first_file.name, second_file.name})
            reader.commit(warm, await store.commit(warm))
        holder = await psycopg.AsyncConnection.connect(database_url)
        await holder.execute("LOCK TABLE lines IN ACCESS SHARE MODE")  # until its rollback
        first_placed = asyncio.Event()
        first_commit = asyncio.create_task(a.commit(first, placed=first_placed))
        await asyncio.to_thread(
            wait_for,
            lambda: ("active", "Lock") in activity(database_url, "tasklog-collector@host-a"),
            30,
            0.02,
            "run 1's partition waiting on the other session",
        )
        second_commit = asyncio.create_task(
            b.commit(second, after=After(first_placed, first_commit))
        )
        # Run 2 had every chance to begin: it must not have (see the module).
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            states = activity(database_url, "tasklog-collector@host-b")
            assert states == [("idle", "Client")], f"run 2 began while run 1 waits: {states}"
            await asyncio.sleep(0.05)
        await holder.rollback()
        await holder.close()
        done: tuple[Stored, Stored] = await asyncio.wait_for(
            asyncio.gather(first_commit, second_commit), 60
        )
    assert [stored.rows for stored in done] == [1, 1]
    runs = pg_rows(
        database_url,
        "SELECT run, first_seq, state FROM task_runs WHERE task_id = 'retried' ORDER BY run",
    )
    assert runs == [(0, 1, "RETRY"), (1, 2, "SUCCESS")]
    lines = pg_rows(database_url, "SELECT seq, message FROM lines WHERE task_id = 'retried'")
    assert sorted(lines) == [(1, "run 1"), (2, "run 2")]
    assert day in partitions(database_url)


def _files(batch: Batch) -> list[str]:
    return [chunk.state.name for chunk in batch.chunks]


def partitions(url: str) -> set[str]:
    return {
        name
        for (name,) in pg_rows(
            url,
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'lines'",
        )
    }
