"""The search indexes: a trigram index per closed day, and the lines' time order.

Indexing a line's trigrams as it is stored costs the collector 8x its ingest rate
(docs/BENCHMARKS.md), so the open day is never indexed: a search scans today's partition and
looks the other days up in their trigram index (``lines_YYYYMMDD_message_trgm``), built once
the day is over, concurrently, off the ingest path. `apply` does that for every closed day
still without one. The collector runs it in a thread of its own at start and then every
TASKLOG_PRUNE_INTERVAL; `tasklog index` and `tasklog migrate` run it too. One session of a
fleet builds while the others go on: it holds a lease, a row of ``search_index_lease`` (a
session advisory lock would stay held behind PgBouncer's transaction pooling). ``lines_ts``
(migration 0005) keeps newest-first pages cheap. ``TASKLOG_SEARCH=false`` drops them all:
search then scans every line.

pg_trgm ships with Postgres, but creating the extension may need a superuser: without it the
trigram indexes are skipped with one line saying so, and search still works (by scanning).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from tasklog.core import db
from tasklog.core.errors import TasklogError

Q = db.queries("collector", "sql/searchindex.sql")
#: The time order of every day's lines (migration 0005).
TS = "lines_ts"
#: How long the lease lasts from its last renewal: past it, a builder that died is replaced.
LEASE_SECONDS = 3600


class LeaseLost(TasklogError):
    """Another session took the search-index lease."""


def apply(conninfo: str, enabled: bool) -> str:
    """Make the indexes match `enabled`; returns one sentence saying what holds now.

    One session at a time does it (builds take minutes on a large day): another one finds the
    lock taken and says so instead of building the same index twice.
    """
    holder = {"holder": f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"}
    with db.connect(conninfo) as conn, db.translated(conninfo):
        taken = conn.execute(Q["take_lease"], {**holder, "seconds": LEASE_SECONDS}).fetchone()
        if taken is None:
            return "search index: another session is building the indexes now"
        try:
            return _apply(conn, enabled, lambda: _renew(conn, holder))
        finally:
            conn.execute(Q["drop_lease"], holder)


def _renew(conn: psycopg.Connection[Any], holder: dict[str, str]) -> None:
    """Before each build: the lease runs for LEASE_SECONDS more (a build never takes that)."""
    if conn.execute(Q["take_lease"], {**holder, "seconds": LEASE_SECONDS}).fetchone() is None:
        raise LeaseLost("the search-index lease expired and another session took it")


def _apply(conn: psycopg.Connection[Any], enabled: bool, renew: Callable[[], None]) -> str:
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
            renew()
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
