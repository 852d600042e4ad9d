"""Everything through PgBouncer in transaction pooling (Debian's pgbouncer 1.18, which keeps
no prepared statements): `tasklog migrate`, the collector, `tasklog index` and the API, with
TASKLOG_DATABASE_PREPARED_STATEMENTS=false as docs/deploy.md says. Nothing may leak from one
transaction to the next: no advisory lock left held, no session setting, every line stored
once and served."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tasklog.demo.embedded_postgres import EmbeddedPostgres
from tests.helpers import ProcessFactory, pg_rows, tasklog_cli, wait_for
from tests.integration.api_support import PREFIX, follow, http, seqs, start_api
from tests.replication import PgBouncer
from tests.spooling import LINES, Sender

pytestmark = pytest.mark.slow

TASKS = 20
POOLED = {"TASKLOG_DATABASE_PREPARED_STATEMENTS": "false"}


def advisory_locks(server_url: str) -> int:
    return int(
        pg_rows(server_url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")[0][0]
    )


async def test_migrate_collector_index_and_api_through_transaction_pooling(
    embedded_pg: EmbeddedPostgres,
    pgbouncer: Callable[..., PgBouncer],
    procs: ProcessFactory,
    redis_url: str,
    spool_dir: Path,
) -> None:
    with psycopg.connect(embedded_pg.url(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE pooled")
    direct = embedded_pg.url("pooled")
    bouncer = pgbouncer(embedded_pg.port, pool_mode="transaction")
    url = bouncer.url("pooled")
    env = {"TASKLOG_DATABASE_URL": url, **POOLED}

    for _ in range(2):  # the second run finds the schema current
        done = tasklog_cli("migrate", env=env)
        assert done.returncode == 0, done.stderr
    assert advisory_locks(embedded_pg.url()) == 0

    procs.collector(
        database_url=url,
        redis_url=redis_url,
        spool_dir=spool_dir,
        ready="following",
        env={**POOLED, "TASKLOG_BATCH_LINES": "1000"},
    )
    sender = Sender(spool_dir)
    sender.tasks("pooled", TASKS)
    wait_for(
        lambda: (
            pg_rows(
                direct,
                "SELECT count(*), count(DISTINCT (task_id, seq)) FROM lines",
            )
            == [(sender.total, sender.total)]
        ),
        timeout=60,
        interval=0.1,
        message=f"{sender.total} lines stored once",
    )
    assert pg_rows(direct, "SELECT state, count(*) FROM tasks GROUP BY 1") == [("SUCCESS", TASKS)]

    done = tasklog_cli("index", env=env)
    assert done.returncode == 0, done.stderr
    assert "search index" in done.stdout
    # Nothing held past its transaction, on any of the pool's server connections.
    wait_for(
        lambda: advisory_locks(embedded_pg.url()) == 0,
        timeout=10,
        message="no advisory lock left held",
    )

    # The command line's reads, each on a short session of its own.
    listed = tasklog_cli("tasks", "--limit", "50", env=env)
    assert listed.returncode == 0 and listed.stdout.count("pooled-") == TASKS, listed.stderr
    logs = tasklog_cli("logs", "pooled-3", env=env)
    assert logs.returncode == 0, logs.stderr
    assert len(logs.stdout.splitlines()) == LINES
    found = tasklog_cli("grep", "pooled-5 line 7", env=env)
    assert found.returncode == 0, found.stderr

    _, base = start_api(procs, url, redis_url, **POOLED)
    async with http() as session:
        for _ in range(8):  # past psycopg's prepare threshold (5) on each pooled connection
            listed = await (await session.get(f"{base}{PREFIX}/api/tasks/?limit=100")).json()
            assert len(listed["results"]) == TASKS
            found = await (await session.get(f"{base}{PREFIX}/api/search/?q=line+77")).json()
            assert "results" in found, found
        detail = await (await session.get(f"{base}{PREFIX}/api/tasks/pooled-3/")).json()
        assert detail["status"] == "SUCCESS" and len(detail["logs"]) == LINES
        async with follow(session, base, "pooled-7") as stream:
            events = await stream.rest(timeout=30)
        assert seqs(events) == list(range(1, LINES + 1))
        assert events[-1].type == "end"
    await asyncio.to_thread(
        wait_for, lambda: advisory_locks(embedded_pg.url()) == 0, 10, 0.1, "no advisory lock"
    )
