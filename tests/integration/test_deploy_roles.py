"""docs/deploy.md, "Secrets": the API runs with a database login that may only read. The SQL is
taken from the document itself, run on a real server; then a real worker and collector store
a task as the schema owner, and a real `tasklog api` serves it with the read-only login."""

from __future__ import annotations

import json
import re
import secrets
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from collector.migrate import migrate
from tests.helpers import REPO_ROOT, ProcessFactory, free_port, pg_rows, wait_for, with_database

DEPLOY_MD = REPO_ROOT / "docs" / "deploy.md"


def documented_grants() -> str:
    text = DEPLOY_MD.read_text()
    section = text[text.index("## Secrets") :]
    match = re.search(r"```sql\n(.*?)```", section, re.S)
    assert match, "docs/deploy.md, Secrets: the SQL block for the API's login"
    return match.group(1)


def _with_user(url: str, user: str) -> str:
    return re.sub(r"^postgresql://[^@]*@", f"postgresql://{user}@", url)


@pytest.fixture
def roles(pg_server_url: str) -> Iterator[tuple[str, str]]:
    """(owner URL, read-only URL) of a fresh database set up as docs/deploy.md says."""
    suffix = secrets.token_hex(4)
    owner, reader, dbname = f"tl_owner_{suffix}", f"tl_api_{suffix}", f"tl_roles_{suffix}"
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(owner)))
        admin.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(dbname), sql.Identifier(owner)
            )
        )
    owner_url = _with_user(with_database(pg_server_url, dbname), owner)
    grants = (
        documented_grants()
        .replace("tasklog_api", reader)
        .replace("DATABASE tasklog", f"DATABASE {dbname}")
        .replace("ROLE tasklog ", f"ROLE {owner} ")
        .replace("PASSWORD '…'", "")
    )
    with psycopg.connect(owner_url, autocommit=True) as conn:
        # CREATE ROLE needs a superuser (or CREATEROLE): the admin runs that statement.
        create, _, rest = grants.partition(";")
        with psycopg.connect(pg_server_url, autocommit=True) as admin:
            admin.execute(create.encode())
        for statement in rest.split(";"):
            body = "\n".join(x for x in statement.splitlines() if not x.startswith("--"))
            if body.strip():
                conn.execute(body.encode())
    try:
        yield owner_url, _with_user(owner_url, reader)
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
            )
            for role in (reader, owner):
                admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200, url
        return json.loads(response.read())


def test_api_serves_everything_with_a_read_only_login(
    roles: tuple[str, str],
    procs: ProcessFactory,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
) -> None:
    owner_url, reader_url = roles
    migrate(owner_url)
    procs.collector(
        database_url=owner_url, spool_dir=spool_dir, redis_url=redis_url, ready="following"
    )
    procs.worker(redis_url=redis_url, spool_dir=spool_dir, pool="solo", concurrency=1)
    result = celery_client.send_task("demo.print_text", args=("stored by the owner\n",))
    assert result.get(timeout=30) == "ok"
    wait_for(
        lambda: pg_rows(
            owner_url, "SELECT 1 FROM tasks WHERE task_id = %s AND state = 'SUCCESS'", (result.id,)
        ),
        message="the task stored",
    )

    with psycopg.connect(reader_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM lines")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO tasks (task_id) VALUES ('forged')")

    port = free_port()
    procs.start(
        "api",
        [sys.executable, "-m", "tasklog", "api"],
        env={
            "TASKLOG_DATABASE_URL": reader_url,
            "TASKLOG_REDIS_URL": redis_url,
            "TASKLOG_API_PORT": str(port),
        },
        ready=lambda _p: _answers(f"http://127.0.0.1:{port}/tasklog/healthz"),
    )
    base = f"http://127.0.0.1:{port}/tasklog"
    listed = _get(f"{base}/api/tasks/")
    assert result.id in json.dumps(listed)
    detail = _get(f"{base}/api/tasks/{result.id}/")
    assert [line["message"] for line in detail["logs"]] == ["stored by the owner"]
    assert _get(f"{base}/api/diagnostic/")
    with urllib.request.urlopen(f"{base}/api/tasks/{result.id}/raw", timeout=5) as response:
        assert b"stored by the owner" in response.read()
    for page in (f"{base}/", f"{base}/task/{result.id}/", f"{base}/diagnostic/"):
        with urllib.request.urlopen(page, timeout=5) as response:
            assert response.status == 200, page


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False
