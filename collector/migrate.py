"""Numbered SQL migrations (``collector/migrations/NNNN_name.sql``), applied once each.

Several collectors may start at once: an advisory lock makes them take turns, and the
version table makes a second run a no-op.
"""

from __future__ import annotations

import logging
import re
from importlib import resources

import psycopg

from tasklog.core.errors import StoreUnavailable

log = logging.getLogger("tasklog.migrate")

_LOCK_ID = 0x7461736B6C6F67  # "tasklog"
_NAME = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")


def available() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration shipped with this package, in order."""
    found = []
    for entry in resources.files("collector.migrations").iterdir():
        match = _NAME.fullmatch(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def migrate(conninfo: str) -> list[str]:
    """Apply the migrations not yet applied; returns their file names."""
    applied: list[str] = []
    try:
        conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        reason = _last_line(exc)
        raise StoreUnavailable(f"TASKLOG_DATABASE_URL: cannot connect ({reason})") from None
    with conn:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS tasklog_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM tasklog_migrations")}
            for version, name, sql in available():
                if version in done:
                    continue
                log.info("applying migration %s", name)
                conn.execute(sql.encode())
                conn.execute(
                    "INSERT INTO tasklog_migrations (version, name) VALUES (%s, %s)",
                    (version, name),
                )
                applied.append(name)
    return applied


def _last_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[-1] if lines else type(exc).__name__
