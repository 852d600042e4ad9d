"""TASKLOG_SEARCH: create or drop the search indexes on log lines (`tasklog migrate` runs it).

Migration 0005 creates the index when it can; this switch lets a deployment that prefers
ingest speed drop it (search then scans every line) and build it back later. Building it on a
large table takes minutes and blocks the collector's writes meanwhile: do it at a quiet hour.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from tasklog.core import db
from tasklog.core.errors import StorePermissionDenied

Q = db.queries("tasklog", "searchindex.sql")
#: The trigram index on `message`, and the time order of each day's lines (migration 0005).
TRGM, TS = "lines_message_trgm", "lines_ts"


def apply(conninfo: str, enabled: bool) -> str:
    """Make the indexes match `enabled`; returns one sentence saying what holds now."""
    with db.connect(conninfo) as conn, db.translated(conninfo):

        def exists(name: str) -> bool:
            return conn.execute(Q["index_exists"], {"name": name}).fetchone() is not None

        if not enabled:
            if exists(TRGM) or exists(TS):
                conn.execute(Q["drop_index"])
                conn.execute(Q["drop_ts_index"])
                return "search index dropped (TASKLOG_SEARCH=false): search scans every line"
            return "search index off (TASKLOG_SEARCH=false): search scans every line"
        if not exists(TS):
            conn.execute(Q["create_ts_index"])
        if exists(TRGM):
            return "search index present"
        schema = conn.execute(Q["trgm_schema"]).fetchone()
        if schema is None:
            try:
                conn.execute(Q["create_extension"])
            except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedFile) as exc:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "refused"
                raise StorePermissionDenied(
                    f"search index: CREATE EXTENSION pg_trgm failed ({reason}); a superuser"
                    " runs it in this database, or set TASKLOG_SEARCH=false"
                ) from None
            schema = conn.execute(Q["trgm_schema"]).fetchone()
        assert schema is not None
        ops = sql.SQL("{}.gin_trgm_ops").format(sql.Identifier(schema[0]))
        conn.execute(sql.SQL(Q["create_index"]).format(ops=ops))
        return "search index built"
