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
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from collector.migrate import available, migrate
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


class Page(HTMLParser):
    """A page as its reader sees it: the text of each element, found by an attribute."""

    VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta"})

    def __init__(self, url: str) -> None:
        super().__init__()
        self.elements: list[tuple[dict[str, str | None], list[str]]] = []
        self._open: list[tuple[str, list[str]]] = []
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200, url
            assert response.headers.get_content_type() == "text/html", url
            self.feed(response.read().decode())

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.VOID:
            return
        text: list[str] = []
        self.elements.append((dict(attrs), text))
        self._open.append((tag, text))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, text in self._open:
            text.append(data)

    def all_text(self, **attr: str) -> list[str]:
        """The text of each element whose attributes hold `attr` (``data_task_id`` for
        ``data-task-id``; a class is one of the element's classes), whitespace collapsed."""
        wanted = {k.rstrip("_").replace("_", "-"): v for k, v in attr.items()}

        def holds(attrs: dict[str, str | None]) -> bool:
            return all(
                v in (attrs.get(k) or "").split() if k == "class" else attrs.get(k) == v
                for k, v in wanted.items()
            )

        return [" ".join(" ".join(text).split()) for attrs, text in self.elements if holds(attrs)]

    def text(self, **attr: str) -> str:
        """The text of the one element `all_text` finds."""
        (found,) = self.all_text(**attr)
        return found


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
        database_url=owner_url,
        spool_dir=spool_dir,
        redis_url=redis_url,
        ready="following",
        env={"TASKLOG_HEARTBEAT_INTERVAL": "0.5"},
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
    wait_for(
        lambda: pg_rows(owner_url, "SELECT stats->>'lines' FROM collectors") == [("1",)],
        message="the collector's heartbeat counting the line",
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
    ((host, collector_host),) = pg_rows(
        owner_url,
        "SELECT t.host, c.host FROM tasks t, collectors c WHERE t.task_id = %s",
        (result.id,),
    )
    schema = max(version for version, _, _ in available())
    base = f"http://127.0.0.1:{port}/tasklog"
    # The JSON: the task listed and its detail, raw log and the diagnostic report.
    listed = _get(f"{base}/api/tasks/")["results"]
    assert [(t["task_id"], t["task_name"], t["status"]) for t in listed] == [
        (result.id, "demo.print_text", "SUCCESS")
    ]
    detail = _get(f"{base}/api/tasks/{result.id}/")
    assert [line["message"] for line in detail["logs"]] == ["stored by the owner"]
    with urllib.request.urlopen(f"{base}/api/tasks/{result.id}/raw", timeout=5) as response:
        (raw,) = response.read().decode().splitlines()
        assert raw.endswith(" [stdout] stored by the owner"), raw
    report = _get(f"{base}/api/diagnostic/")
    assert report["postgres"]["ok"] is True and report["postgres"]["schema_version"] == schema
    assert [c["host"] for c in report["collectors"]] == [collector_host]

    # The pages, as their reader sees them.
    tasks = Page(f"{base}/")
    row = tasks.text(data_task_id=result.id)
    assert row.startswith(result.id[:12]) and "demo.print_text SUCCESS" in row, row
    assert tasks.all_text(class_="empty") == []  # not "No tasks yet."
    task = Page(f"{base}/task/{result.id}/")
    assert task.text(id="task-id") == result.id
    assert task.text(id="status") == "SUCCESS"
    assert task.text(id="task-name") == "demo.print_text"
    assert task.text(id="task-host") == host
    diagnostic = Page(f"{base}/diagnostic/")
    cards = diagnostic.all_text(class_="card")
    postgres = next(card for card in cards if card.startswith("Postgres"))
    assert postgres.endswith(f"schema version {schema}"), postgres
    (collector_card,) = [c for c in cards if "Collector on" in c]
    assert collector_card.startswith(collector_host) and "Lines stored 1" in collector_card, (
        collector_card
    )


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False
