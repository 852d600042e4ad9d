"""The search indexes: a trigram index per closed day, and the lines' time order.

Indexing a line's trigrams as it is stored costs the collector 8x its ingest rate
(docs/BENCHMARKS.md), so the open day is never indexed: a search scans today's partition and
looks the other days up in their trigram index (``lines_YYYYMMDD_message_trgm``), built once
the day is over, concurrently, off the ingest path. `apply` does that for every closed day
still without one. The collector runs it in a thread of its own at start and then every
TASKLOG_PRUNE_INTERVAL (a session advisory lock lets one collector of a fleet build while the
others go on); `tasklog index` and `tasklog migrate` run it too. ``lines_ts`` (migration 0005)
keeps newest-first pages cheap. ``TASKLOG_SEARCH=false`` drops them all: search then scans
every line.

pg_trgm ships with Postgres, but creating the extension may need a superuser: without it the
trigram indexes are skipped with one line saying so, and search still works (by scanning).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from tasklog.core import db

Q = db.queries("collector", "sql/searchindex.sql")
#: The time order of every day's lines (migration 0005).
TS = "lines_ts"


def apply(conninfo: str, enabled: bool) -> str:
    """Make the indexes match `enabled`; returns one sentence saying what holds now.

    One session at a time does it (builds take minutes on a large day): another one finds the
    lock taken and says so instead of building the same index twice.
    """
    with db.connect(conninfo) as conn, db.translated(conninfo):
        locked = conn.execute(Q["try_lock"]).fetchone()
        if not (locked and locked[0]):
            return "search index: another session is building the indexes now"
        try:
            return _apply(conn, enabled)
        finally:
            conn.execute(Q["unlock"])


def _apply(conn: psycopg.Connection[Any], enabled: bool) -> str:
    conn.execute(Q["drop_parent_index"])
    days = conn.execute(Q["day_partitions"]).fetchall()
    if not enabled:
        for _partition, index, _closed, valid in days:
            if valid is not None:
                conn.execute(sql.SQL(Q["drop_day_index"]).format(index=sql.Identifier(index)))
        conn.execute(Q["drop_ts_index"])
        return "search indexes off (TASKLOG_SEARCH=false): search scans every line"
    conn.execute(Q["create_ts_index"])
    ops = _trgm_ops(conn)
    if ops is None:
        return (
            "search: pg_trgm is not installed and this login may not create it (a superuser"
            " runs CREATE EXTENSION pg_trgm, then tasklog migrate); search scans every line"
        )
    built = 0
    for partition, index, closed, valid in days:
        if not closed:
            continue
        name = sql.Identifier(index)
        if valid is False:  # a build that was interrupted leaves an invalid index
            conn.execute(sql.SQL(Q["drop_day_index"]).format(index=name))
        if valid is not True:
            statement = sql.SQL(Q["create_day_index"]).format(
                index=name, partition=sql.Identifier(partition), ops=ops
            )
            conn.execute(statement)
            built += 1
    closed_days = sum(1 for day in days if day[2])
    return (
        f"search index: {closed_days} closed days indexed ({built} built now),"
        " today's lines scanned"
    )


def _trgm_ops(conn: psycopg.Connection[Any]) -> sql.Composable | None:
    """pg_trgm's operator class, creating the extension if this login may; None if not."""
    schema = conn.execute(Q["trgm_schema"]).fetchone()
    if schema is None:
        try:
            conn.execute(Q["create_extension"])
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedFile):
            return None
        schema = conn.execute(Q["trgm_schema"]).fetchone()
        if schema is None:
            return None
    return sql.SQL("{}.gin_trgm_ops").format(sql.Identifier(schema[0]))
