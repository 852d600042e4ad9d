"""Numbered SQL migrations (``collector/migrations/NNNN_name.sql``), applied once each.

Several collectors may start at once: an advisory lock makes them take turns, and the
version table makes a second run a no-op.
"""

from __future__ import annotations

import logging
import re
from importlib import resources

from tasklog.core import db

log = logging.getLogger("tasklog.migrate")

Q = db.queries("collector.sql", "migrate.sql")
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
    """Apply the migrations not yet applied; returns their file names. Driver errors arrive
    as the project's one-line errors (`tasklog.core.db`)."""
    applied: list[str] = []
    with db.connect(conninfo) as conn, db.translated(conninfo), conn.transaction():
        conn.execute(Q["lock"], {"lock": _LOCK_ID})
        conn.execute(Q["create_version_table"])
        done = {row[0] for row in conn.execute(Q["applied_versions"])}
        for version, name, sql in available():
            if version in done:
                continue
            log.info("applying migration %s", name)
            conn.execute(sql.encode())
            conn.execute(Q["record_version"], {"version": version, "name": name})
            applied.append(name)
    return applied
