"""The test infrastructure itself: embedded servers, fixtures and a real Celery worker."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import psycopg
import pytest
import redis

from capture_shim import spool
from tasklog.core.process import pid_alive
from tasklog.demo.embedded import EmbeddedServerError
from tasklog.demo.embedded_postgres import EmbeddedPostgres
from tasklog.demo.embedded_redis import EmbeddedRedis
from tests.helpers import ProcessFactory, pg_rows, wait_for


def test_embedded_postgres_restarts_on_same_port_and_keeps_data(pg_state_dir: Path) -> None:
    server = EmbeddedPostgres(pg_state_dir, fast=True)
    with server:
        port = server.port
        pg_rows(server.url(), "CREATE TABLE kept (v int)")
        pg_rows(server.url(), "INSERT INTO kept VALUES (42)")

        server.stop()
        assert not server.is_running()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(server.url(), connect_timeout=2).close()

        server.start()
        assert server.port == port
        assert pg_rows(server.url(), "SELECT v FROM kept") == [(42,)]

        server.kill()
        assert not server.is_running()
        server.start()
        assert server.port == port
        assert pg_rows(server.url(), "SELECT v FROM kept") == [(42,)]
    assert not server.is_running()


def test_embedded_postgres_adopts_a_server_left_running(pg_state_dir: Path) -> None:
    first = EmbeddedPostgres(pg_state_dir, fast=True)
    first.start()
    try:
        second = EmbeddedPostgres(pg_state_dir)
        second.start()
        assert second.port == first.port
        assert pg_rows(second.url(), "SELECT 1") == [(1,)]
    finally:
        first.stop()
    assert not second.is_running()


def test_embedded_postgres_port_taken_names_the_log(pg_state_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = EmbeddedPostgres(pg_state_dir, port=taken.getsockname()[1], fast=True)
        with pytest.raises(EmbeddedServerError, match=r"(?s)failed to start.*TCP/IP.*pgdata/log"):
            server.start()
    assert not server.is_running()


def test_embedded_redis_answers_and_stops(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url(db=2))
        try:
            client.set("k", "v")
            assert client.get("k") == b"v"
        finally:
            client.close()
        pid = server.pid
    assert pid is not None and not server.is_running()


def test_embedded_redis_port_taken_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = EmbeddedRedis(tmp_path / "redis", port=taken.getsockname()[1])
        with pytest.raises(EmbeddedServerError, match=r"(?s)exited at start.*redis\.log"):
            server.start()


def test_database_url_is_migrated_and_private(database_url: str, pg_server_url: str) -> None:
    tables = {
        row[0]
        for row in pg_rows(
            database_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        )
    }
    assert "tasklog_migrations" in tables
    assert pg_rows(database_url, "SELECT current_database()")[0][0].startswith("tl_")


def test_redis_url_starts_empty(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.dbsize() == 0
        client.set("left-behind", "1")  # the next test's flush removes it
    finally:
        client.close()


def test_embedded_pg_fixture_survives_kill(embedded_pg: EmbeddedPostgres) -> None:
    url = embedded_pg.url("tasklog")
    assert pg_rows(url, "SELECT count(*) FROM tasklog_migrations")[0][0] >= 1
    embedded_pg.kill()
    embedded_pg.start()
    assert pg_rows(url, "SELECT count(*) FROM tasklog_migrations")[0][0] >= 1


def test_process_factory_stops_a_process_group(procs: ProcessFactory) -> None:
    # A shell that starts a child: terminate() must take both down.
    proc = procs.start("sleeper", ["sh", "-c", "sleep 60 & echo started; wait"], ready="started")
    assert proc.alive
    children = wait_for(proc.children, timeout=5, message="the shell's child")
    proc.terminate(timeout=5)
    assert not proc.alive
    assert [pid for pid in children if pid_alive(pid)] == []
    with pytest.raises(AssertionError, match="exited with code 3"):
        procs.start("failing", ["sh", "-c", "echo boom; exit 3"], ready="never")


def _records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_solo_worker_writes_a_spool_file(
    procs: ProcessFactory, redis_url: str, spool_dir: Path, celery_client: object
) -> None:
    procs.worker(redis_url=redis_url, spool_dir=spool_dir, pool="solo", concurrency=1)
    result = celery_client.send_task("demo.demo_quick_task", ignore_result=True)  # type: ignore[attr-defined]

    def finished() -> list[dict[str, object]] | None:
        for path in spool_dir.glob("*" + spool.SUFFIX):
            records = _records(path)
            if records and records[-1]["k"] == spool.END:
                return records
        return None

    records = wait_for(finished, timeout=30, message="a spool file with an end record")
    start, *lines, end = records
    assert start["k"] == spool.START and start["task_id"] == result.id
    assert start["name"] == "demo.demo_quick_task"
    assert [r["m"] for r in lines if r["k"] == spool.LINE] == ["Quick task done"]
    assert end["state"] == "SUCCESS"


def test_worker_and_collector_store_a_task(
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    celery_client: object,
) -> None:
    procs.collector(
        database_url=database_url, redis_url=redis_url, spool_dir=spool_dir, ready="following"
    )
    procs.worker(redis_url=redis_url, spool_dir=spool_dir, pool="solo", concurrency=1)
    result = celery_client.send_task("demo.demo_quick_task", ignore_result=True)  # type: ignore[attr-defined]

    rows = wait_for(
        lambda: pg_rows(
            database_url,
            "SELECT state, task_name FROM tasks WHERE task_id = %s AND state = 'SUCCESS'",
            (result.id,),
        ),
        timeout=30,
        message="the task stored as SUCCESS",
    )
    assert rows == [("SUCCESS", "demo.demo_quick_task")]


def test_prefork_worker_runs_a_task_and_stops_with_its_pool(
    procs: ProcessFactory, redis_url: str, spool_dir: Path, celery_client: object
) -> None:
    worker = procs.worker(redis_url=redis_url, spool_dir=spool_dir)
    result = celery_client.send_task("demo.demo_quick_task")  # type: ignore[attr-defined]
    assert result.get(timeout=20) == "quick"
    children = worker.children()
    assert len(children) == 2
    worker.terminate()
    assert not worker.alive
    assert [pid for pid in children if pid_alive(pid)] == []
