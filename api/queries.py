"""The API's reads from Postgres: named queries from ``sql/queries.sql``, loaded once.

`Store` owns the connection pool and is the one place where driver errors become
`StoreUnavailable`, so that routes speak the domain's language.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from importlib import resources
from typing import Any, cast

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from tasklog.core.errors import StoreUnavailable

Row = dict[str, Any]

#: The task columns every JSON view of a task carries.
TASK_COLUMNS = (
    "task_id",
    "task_name",
    "state",
    "progress",
    "progress_message",
    "host",
    "worker",
    "pid",
    "parent_id",
    "root_id",
    "retries",
    "created_at",
    "started_at",
    "completed_at",
    "runtime",
    "exc_type",
    "exc_message",
    "line_count",
    "last_seq",
    "lines_omitted",
    "spool_errors",
)

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def load_queries() -> dict[str, str]:
    """The ``-- name: x`` blocks of ``queries.sql``, by name."""
    text = resources.files("api").joinpath("sql/queries.sql").read_text(encoding="utf-8")
    parts = _NAME.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


QUERIES = load_queries()
_COLUMNS = sql.SQL(", ").join(map(sql.Identifier, TASK_COLUMNS))


def _query(name: str, **fragments: sql.Composable) -> sql.Composed:
    return sql.SQL(QUERIES[name]).format(columns=_COLUMNS, **fragments)


class TaskFilter:
    """The task list's filters, already validated; each adds one fixed SQL fragment."""

    def __init__(
        self,
        states: Sequence[str] = (),
        name: str | None = None,
        host: str | None = None,
        since: datetime | None = None,
        before: tuple[datetime, str] | None = None,
    ) -> None:
        self.states, self.name, self.host, self.since, self.before = (
            list(states),
            name,
            host,
            since,
            before,
        )

    def where(self) -> tuple[sql.Composable, dict[str, Any]]:
        clauses: list[sql.Composable] = []
        params: dict[str, Any] = {}
        if self.states:
            clauses.append(sql.SQL("state = ANY(%(states)s)"))
            params["states"] = self.states
        if self.name is not None:
            clauses.append(sql.SQL("task_name = %(name)s"))
            params["name"] = self.name
        if self.host is not None:
            clauses.append(sql.SQL("host = %(host)s"))
            params["host"] = self.host
        if self.since is not None:
            clauses.append(sql.SQL("created_at >= %(since)s"))
            params["since"] = self.since
        if self.before is not None:
            clauses.append(sql.SQL("(created_at, task_id) < (%(b_at)s, %(b_id)s)"))
            params["b_at"], params["b_id"] = self.before
        if not clauses:
            return sql.SQL("true"), params
        return sql.SQL(" AND ").join(clauses), params


class Store:
    """Read access to the collector's schema through one async connection pool."""

    def __init__(self, conninfo: str, *, max_size: int = 10, timeout: float = 10.0) -> None:
        self.pool = AsyncConnectionPool(
            conninfo,
            min_size=1,
            max_size=max_size,
            timeout=timeout,
            open=False,
            kwargs={"autocommit": True, "row_factory": dict_row},
            name="tasklog-api",
        )

    async def open(self, timeout: float = 10.0) -> None:
        try:
            await self.pool.open(wait=True, timeout=timeout)
        except PoolTimeout as exc:
            await self.pool.close(timeout=1.0)
            raise StoreUnavailable(
                f"TASKLOG_DATABASE_URL: could not connect to Postgres within {timeout:g}s"
            ) from exc

    async def close(self) -> None:
        await self.pool.close(timeout=5.0)

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[psycopg.AsyncConnection[Row]]:
        try:
            async with self.pool.connection() as conn:
                # The pool's connections have the dict_row factory (see `__init__`).
                yield cast("psycopg.AsyncConnection[Row]", conn)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise StoreUnavailable(f"Postgres is unreachable: {exc}") from exc
        except psycopg.errors.UndefinedTable as exc:
            raise StoreUnavailable("the tasklog schema is missing: run `tasklog migrate`") from exc

    async def _all(self, query: sql.Composed, params: dict[str, Any]) -> list[Row]:
        async with self._conn() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchall()

    async def _one(self, query: sql.Composed, params: dict[str, Any]) -> Row | None:
        async with self._conn() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchone()

    async def list_tasks(self, filters: TaskFilter, limit: int) -> list[Row]:
        where, params = filters.where()
        return await self._all(_query("list_tasks", where=where), {**params, "limit": limit})

    async def get_task(self, task_id: str) -> Row | None:
        return await self._one(_query("get_task"), {"task_id": task_id})

    async def task_progress(self, task_id: str) -> Row | None:
        return await self._one(_query("task_progress"), {"task_id": task_id})

    async def tasks_updated_since(self, since: datetime, limit: int = 500) -> list[Row]:
        return await self._all(_query("tasks_updated_since"), {"since": since, "limit": limit})

    async def lines_after(self, task_id: str, after_seq: int, limit: int) -> list[Row]:
        params = {"task_id": task_id, "after_seq": after_seq, "limit": limit}
        return await self._all(_query("lines_after"), params)

    async def collectors(self) -> list[Row]:
        return await self._all(_query("collectors"), {})

    async def server_info(self) -> Row | None:
        return await self._one(_query("server_info"), {})
