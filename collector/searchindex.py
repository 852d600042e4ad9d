"""The search indexes: trigram indexes built off the ingest path, and the lines' time order.

Indexing a line's trigrams as it is stored costs the collector 8x its ingest rate
(docs/BENCHMARKS.md), so no trigram index is ever written per stored line. Instead:

- the open day is indexed in slices (`tasklog.core.trigram`): each hour once it is over, and
  the hour under way in slices of two minutes as each one ends, every slice a partial index of
  today's partition built concurrently; a search scans only the minutes since the last slice;
- a day that is over gets one index (``lines_YYYYMMDD_message_trgm``), then its slices go.

`apply` brings the indexes up to date. The collector runs it in a thread of its own at start
and after every slice; `tasklog index` and `tasklog migrate` run it too. One session of a
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
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from tasklog.core import db, trigram
from tasklog.core.errors import TasklogError

Q = db.queries("collector", "sql/searchindex.sql")
#: The time order of every day's lines (migration 0005).
TS = "lines_ts"
#: How long the lease lasts from its last renewal: past it, a builder that died is replaced.
LEASE_SECONDS = 3600


class LeaseLost(TasklogError):
    """Another session took the search-index lease."""


def apply(conninfo: str, enabled: bool, now: datetime | None = None) -> str:
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
            return _apply(conn, enabled, lambda: _renew(conn, holder), now)
        finally:
            conn.execute(Q["drop_lease"], holder)


def _renew(conn: psycopg.Connection[Any], holder: dict[str, str]) -> None:
    """Before each build: the lease runs for LEASE_SECONDS more (a build never takes that)."""
    if conn.execute(Q["take_lease"], {**holder, "seconds": LEASE_SECONDS}).fetchone() is None:
        raise LeaseLost("the search-index lease expired and another session took it")


def _apply(
    conn: psycopg.Connection[Any],
    enabled: bool,
    renew: Callable[[], None],
    now: datetime | None,
) -> str:
    conn.execute(Q["drop_parent_index"])
    days = conn.execute(Q["day_partitions"]).fetchall()
    slices = [(name, valid) for name, valid in conn.execute(Q["slice_indexes"]).fetchall()]
    if not enabled:
        for _partition, index, _closed, valid in days:
            if valid is not None:
                conn.execute(sql.SQL(Q["drop_day_index"]).format(index=sql.Identifier(index)))
        for name, _valid in slices:
            conn.execute(sql.SQL(Q["drop_day_index"]).format(index=sql.Identifier(name)))
        conn.execute(Q["drop_ts_index"])
        return "search indexes off (TASKLOG_SEARCH=false): search scans every line"
    conn.execute(Q["create_ts_index"])
    ops = _trgm_ops(conn)
    if ops is None:
        return (
            "search: pg_trgm is not installed and this login may not create it (a superuser"
            " runs CREATE EXTENSION pg_trgm, then tasklog migrate); search scans every line"
        )
    if now is None:
        now = conn.execute(Q["now"]).fetchone()[0]  # type: ignore[index]
    today = trigram.midnight(now.astimezone(UTC).date())
    sliced = _slice_today(conn, ops, today, now, slices, renew)
    built = 0
    indexed: set[date] = set()
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
        indexed.add(datetime.strptime(partition, "lines_%Y%m%d").date())
    # A day's slices go once its day index is there.
    for name, _valid in conn.execute(Q["slice_indexes"]).fetchall():
        parsed = trigram.parse(name)
        if isinstance(parsed, trigram.Slice) and parsed.low.date() in indexed:
            conn.execute(sql.SQL(Q["drop_day_index"]).format(index=sql.Identifier(name)))
    closed_days = sum(1 for day in days if day[2])
    return (
        f"search index: {closed_days} closed days indexed ({built} built now);"
        f" today indexed up to {sliced[0]:%H:%M} UTC in {sliced[1]} slices"
        f" ({sliced[2]} built now), later lines scanned"
    )


def _slice_today(
    conn: psycopg.Connection[Any],
    ops: sql.Composable,
    today: datetime,
    now: datetime,
    existing: list[tuple[str, bool]],
    renew: Callable[[], None],
) -> tuple[datetime, int, int]:
    """Index the open day in slices: each hour that is over, then the hour under way up to the
    last `trigram.SLICE` that is over; drop the slices an hour's index now covers.

    A slice with no line yet is not built (nothing to find; a late line there is scanned).
    Returns how far today is indexed, the number of slices and how many were built now.
    """
    partition = sql.Identifier(f"lines_{today:%Y%m%d}")
    valid: set[trigram.Slice] = set()
    for name, ok in existing:
        parsed = trigram.parse(name)
        if not isinstance(parsed, trigram.Slice) or parsed.low < today:
            continue
        if ok:
            valid.add(parsed)
        else:  # an interrupted build
            conn.execute(sql.SQL(Q["drop_day_index"]).format(index=sql.Identifier(name)))
    hour = trigram.floor(now, trigram.HOUR)
    wanted = [trigram.Slice(low, low + trigram.HOUR) for low in _steps(today, hour, trigram.HOUR)]
    done = max([hour, *(s.high for s in valid if s.low >= hour)])
    if (end := trigram.floor(now, trigram.SLICE)) > done:
        wanted.append(trigram.Slice(done, end))
    built = 0
    if conn.execute(Q["partition_exists"], {"name": f"lines_{today:%Y%m%d}"}).fetchone():
        for piece in wanted:
            if piece in valid or any(s.low <= piece.low and piece.high <= s.high for s in valid):
                continue
            if not _has_lines(conn, partition, piece):
                continue
            renew()
            conn.execute(
                sql.SQL(Q["create_slice_index"]).format(
                    index=sql.Identifier(piece.name),
                    partition=partition,
                    ops=ops,
                    low=sql.Literal(piece.low),
                    high=sql.Literal(piece.high),
                )
            )
            valid.add(piece)
            built += 1
    for piece in sorted(valid):
        if any(s != piece and s.low <= piece.low and piece.high <= s.high for s in valid):
            conn.execute(sql.SQL(Q["drop_day_index"]).format(index=sql.Identifier(piece.name)))
            valid.discard(piece)
    upto = max([today, *(s.high for s in valid)])
    return upto, len(valid), built


def _steps(low: datetime, high: datetime, step: timedelta) -> list[datetime]:
    out = []
    while low < high:
        out.append(low)
        low += step
    return out


def _has_lines(conn: psycopg.Connection[Any], partition: sql.Composable, piece: Any) -> bool:
    found = conn.execute(
        sql.SQL(Q["slice_has_lines"]).format(partition=partition),
        {"low": piece.low, "high": piece.high},
    ).fetchone()
    return found is not None


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
