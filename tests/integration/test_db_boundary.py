"""The database boundary (`tasklog.core.db`): real driver errors become one line naming what to
fix, in the CLI (exit code 2, no traceback) and in the API (503 JSON) alike."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tasklog.core import db
from tasklog.core.errors import SchemaMissing, StorePermissionDenied, StoreUnavailable
from tests.helpers import free_port, pg_rows, tasklog_cli, with_database
from tests.integration.api_support import PREFIX, api_settings, running_api

MIGRATE = "run `tasklog migrate`"


@pytest.fixture
def empty_database_url(pg_server_url: str) -> Iterator[str]:
    """A database nobody migrated."""
    name = f"tl_empty_{secrets.token_hex(4)}"
    pg_rows(pg_server_url, f'CREATE DATABASE "{name}"')
    try:
        yield with_database(pg_server_url, name)
    finally:
        pg_rows(pg_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def unprivileged_url(database_url: str) -> Iterator[str]:
    """The migrated database, as a role that may log in and nothing else."""
    role, password = f"tl_nobody_{secrets.token_hex(4)}", secrets.token_hex(8)
    pg_rows(
        database_url,
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}")
        .format(sql.Identifier(role), sql.Literal(password))
        .as_string(None),
    )
    try:
        yield psycopg.conninfo.make_conninfo(database_url, user=role, password=password)
    finally:
        pg_rows(database_url, sql.SQL("DROP ROLE {}").format(sql.Identifier(role)).as_string(None))


def _refused_url() -> str:
    return f"postgresql://postgres@127.0.0.1:{free_port()}/tasklog"


def _translated(conninfo: str, statement: str | None = None) -> Exception:
    """What the boundary makes of connecting (and running `statement`) for real."""
    with pytest.raises(StoreUnavailable) as caught, db.translated(conninfo):
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
            assert statement is not None, "connected where no server should be"
            conn.execute(statement.encode())
    assert isinstance(caught.value.__cause__, psycopg.Error)
    return caught.value


# -- translate, on real driver errors ------------------------------------------------------------


def test_a_refused_port_names_the_setting_the_server_and_the_reason() -> None:
    url = _refused_url()
    error = _translated(url)
    assert type(error) is StoreUnavailable
    assert (
        str(error)
        == f"TASKLOG_DATABASE_URL: could not connect to {db.where(url)} (connection refused)"
    )


def test_a_missing_table_says_run_migrate(empty_database_url: str) -> None:
    error = _translated(empty_database_url, "SELECT * FROM tasks")
    assert isinstance(error, SchemaMissing)
    name = psycopg.conninfo.conninfo_to_dict(empty_database_url)["dbname"]
    assert str(error) == (
        f'TASKLOG_DATABASE_URL: database "{name}" on {db.where(empty_database_url)} '
        f"has no tasklog schema: {MIGRATE}"
    )


def test_a_role_without_privilege_is_permission_denied(unprivileged_url: str) -> None:
    error = _translated(unprivileged_url, "SELECT * FROM tasks")
    assert isinstance(error, StorePermissionDenied)
    assert str(error) == "TASKLOG_DATABASE_URL: permission denied for table tasks"


def test_errors_about_the_data_are_left_to_the_caller(database_url: str) -> None:
    with pytest.raises(psycopg.errors.InvalidTextRepresentation), db.translated(database_url):
        with db.connect(database_url) as conn:
            conn.execute("SELECT 'x'::int")


# -- the CLI ---------------------------------------------------------------------------------------


def _one_line_error(result: Any) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tasklog: "), result.stderr
    return str(lines[0])


@pytest.mark.parametrize(
    "args", [("tasks",), ("logs", "some-task"), ("logs", "-f", "some-task"), ("prune",)]
)
def test_cli_on_a_database_never_migrated_says_run_migrate(
    empty_database_url: str, args: tuple[str, ...]
) -> None:
    result = tasklog_cli(*args, env={"TASKLOG_DATABASE_URL": empty_database_url})
    line = _one_line_error(result)
    assert line.startswith("tasklog: TASKLOG_DATABASE_URL: database ")
    assert line.endswith(f"has no tasklog schema: {MIGRATE}")


def test_cli_connection_refused_and_permission_denied_are_one_line(unprivileged_url: str) -> None:
    refused = tasklog_cli("tasks", env={"TASKLOG_DATABASE_URL": _refused_url()})
    assert _one_line_error(refused).startswith(
        "tasklog: TASKLOG_DATABASE_URL: could not connect to 127.0.0.1:"
    )
    assert _one_line_error(refused).endswith("(connection refused)")
    denied = tasklog_cli("logs", "x", env={"TASKLOG_DATABASE_URL": unprivileged_url})
    assert _one_line_error(denied) == (
        "tasklog: TASKLOG_DATABASE_URL: permission denied for table tasks"
    )


def test_cli_migrate_refused_is_one_line() -> None:
    result = tasklog_cli("migrate", env={"TASKLOG_DATABASE_URL": _refused_url()})
    assert _one_line_error(result).endswith("(connection refused)")


# -- the API ---------------------------------------------------------------------------------------


@pytest.mark.asyncio(loop_scope="session")
async def test_api_on_a_database_never_migrated_answers_503_run_migrate(
    empty_database_url: str,
) -> None:
    async with running_api(api_settings(empty_database_url, None)) as client:
        for path in ("/api/tasks/", "/api/tasks/some-task/", "/sse/task/some-task/"):
            response = await client.get(PREFIX + path)
            assert response.status == 503, path
            body = await response.json()
            assert body["error"].endswith(f"has no tasklog schema: {MIGRATE}"), body
            assert body["error"].startswith("TASKLOG_DATABASE_URL: database ")


@pytest.mark.asyncio(loop_scope="session")
async def test_api_permission_denied_answers_503_naming_the_setting(
    unprivileged_url: str,
) -> None:
    async with running_api(api_settings(unprivileged_url, None)) as client:
        response = await client.get(PREFIX + "/api/tasks/")
        assert response.status == 503
        assert (await response.json())["error"] == (
            "TASKLOG_DATABASE_URL: permission denied for table tasks"
        )
