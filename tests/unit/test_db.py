"""`tasklog.core.db` without a server: real driver errors of a port nobody listens on."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from tasklog.core import db
from tasklog.core.errors import ConfigError, StoreUnavailable
from tasklog.demo.embedded import free_port


def _refused() -> str:
    return f"postgresql://tasklog:secret@127.0.0.1:{free_port()}/tasklog"


def test_connect_to_a_refused_port_is_one_line_without_the_password() -> None:
    url = _refused()
    with pytest.raises(StoreUnavailable) as caught:
        db.connect(url)
    message = str(caught.value)
    assert (
        message
        == f"TASKLOG_DATABASE_URL: could not connect to {db.where(url)} (connection refused)"
    )
    assert "secret" not in message
    assert isinstance(caught.value.__cause__, psycopg.OperationalError)


def test_a_pool_that_never_connects_times_out_in_one_line() -> None:
    url = _refused()

    async def open_pool() -> None:
        pool = AsyncConnectionPool(url, min_size=1, open=False)
        try:
            with db.translated(url):
                await pool.open(wait=True, timeout=0.5)
        finally:
            await pool.close()

    with pytest.raises(StoreUnavailable) as caught:
        asyncio.run(open_pool())
    assert isinstance(caught.value.__cause__, PoolTimeout)
    assert str(caught.value).startswith(
        f"TASKLOG_DATABASE_URL: no connection to {db.where(url)} became free in time"
    )


def test_a_malformed_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^TASKLOG_DATABASE_URL: not a Postgres URL"):
        db.connect("postgresql://x@127.0.0.1:1/x?no_such_option=1")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:secret@db:6432/x", "db:6432"),
        ("postgresql://u@h1:5001,h2:5002/x?target_session_attrs=read-write", "h1:5001,h2:5002"),
        ("postgresql://u@h1,h2/x", "h1:5432,h2:5432"),
        ("host=/run/postgresql dbname=x", "/run/postgresql"),
    ],
)
def test_where_names_every_host_of_a_multi_host_url(url: str, shown: str) -> None:
    assert db.where(url) == shown


async def test_pool_warnings_never_quote_the_password(caplog: pytest.LogCaptureFixture) -> None:
    """psycopg's pool logs every failed attempt with libpq's message, which quotes a malformed
    URL whole: the filter masks the password in those records."""
    url = "postgresql://tasklog:hunter2-secret@[::1/tasklog"
    db.hide_secrets_in_driver_logs(url)
    pool = AsyncConnectionPool(url, min_size=1, open=False, timeout=0.5, reconnect_timeout=0.5)
    with caplog.at_level("WARNING", logger="psycopg.pool"):
        with pytest.raises(PoolTimeout):
            await pool.open(wait=True, timeout=0.5)
        await pool.close(timeout=1)
    warnings = [r.getMessage() for r in caplog.records if r.name == "psycopg.pool"]
    assert warnings, "the pool logged its failed attempts"
    assert all("hunter2" not in w and "********" in w for w in warnings), warnings


def test_a_malformed_url_is_one_line_with_the_password_masked() -> None:
    with pytest.raises(ConfigError) as caught:
        db.check("postgresql://tasklog:hunter2-secret@[::1/tasklog")
    assert "hunter2" not in str(caught.value)
    assert "postgresql://tasklog:********@[::1/tasklog" in str(caught.value)
