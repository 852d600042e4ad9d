"""Retention: the day partitions of `lines`, made before a batch needs them and dropped once
older than `TASKLOG_RETENTION_DAYS`, and the old tasks deleted in bounded steps.

Dropping a partition costs the same at any size, where deleting its rows would not.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from collector import clock
from tasklog.core import db

Q = db.queries("collector", "sql/retention.sql")
#: Tasks deleted per statement: bounded, so no statement holds locks for long.
_DELETE_STEP = 10_000


def partition_name(day: date) -> str:
    return f"lines_{day:%Y%m%d}"


def partition_day(name: str) -> date | None:
    try:
        return datetime.strptime(name, "lines_%Y%m%d").date()
    except ValueError:
        return None


async def ensure_partitions(
    conn: psycopg.AsyncConnection[Any], days: set[date], known: set[str]
) -> None:
    """Create the partitions of `days` not in `known` (names this connection has seen)."""
    for day in sorted(days):
        name = partition_name(day)
        if name in known:
            continue
        stmt = sql.SQL(Q["create_partition"]).format(
            partition=sql.Identifier(name),
            low=sql.Literal(f"{day.isoformat()} 00:00:00+00"),
            high=sql.Literal(f"{(day + timedelta(days=1)).isoformat()} 00:00:00+00"),
        )
        try:
            await conn.execute(stmt)
        except psycopg.errors.DuplicateTable:
            pass  # another collector made it at the same moment
        except psycopg.errors.UniqueViolation:
            pass
        known.add(name)


async def prune(
    conn: psycopg.AsyncConnection[Any], retention_days: int, known: set[str]
) -> tuple[list[str], int]:
    """Drop line partitions outside the retention window (older than the retention, or of
    days still to come) and delete tasks older than it; cheap at any size.

    Returns the dropped partitions' names and the number of tasks deleted.
    """
    now = datetime.now(UTC)
    cutoff = now - timedelta(days=retention_days)
    # A day after now plus the skew a line may have holds nothing honest (`collector.clock`).
    latest = (now + timedelta(seconds=clock.SKEW)).date()
    dropped = []
    cur = await conn.execute(Q["line_partitions"])
    for (name,) in await cur.fetchall():
        day = partition_day(name)
        if day is not None and (day + timedelta(days=1) <= cutoff.date() or day > latest):
            drop = sql.SQL(Q["drop_partition"]).format(partition=sql.Identifier(name))
            await conn.execute(drop)
            known.discard(name)
            dropped.append(name)
    deleted = 0
    while True:
        cur = await conn.execute(Q["prune_tasks"], {"cutoff": cutoff, "limit": _DELETE_STEP})
        deleted += cur.rowcount
        if cur.rowcount < _DELETE_STEP:
            break
    return dropped, deleted
