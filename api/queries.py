"""Reads of the collector's schema: the named queries of ``sql/queries.sql``, for the API and
for the command line (`tasklog tasks`, `tasklog logs`, which run `statement` on a connection
of their own) alike.

`Store` owns the API's connection pool; driver errors leave it in the project's words
(`tasklog.core.db`), so that routes speak the domain's language.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, cast

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from tasklog.core import db
from tasklog.core.errors import StoreUnavailable, TasklogError

#: A row as psycopg's dict_row gives it: column name → value of that column's type.
Row = dict[str, Any]
#: Bound parameters of a query, by name.
Params = dict[str, object]

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

Q = db.queries("api", "sql/queries.sql")
_COLUMNS = sql.SQL(", ").join(map(sql.Identifier, TASK_COLUMNS))


def statement(name: str, **fragments: sql.Composable) -> sql.Composed:
    """Named query `name`, its ``{columns}`` (and any other fragment) filled in; the command
    line runs these too, on a connection of its own."""
    return sql.SQL(Q[name]).format(columns=_COLUMNS, **fragments)


class TaskFilter:
    """The task list's filters, already validated; each adds one fixed fragment of
    ``sql/queries.sql`` (``filter_*``)."""

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

    def where(self) -> tuple[sql.Composable, Params]:
        given: dict[str, Params] = {}
        if self.states:
            given["filter_states"] = {"states": self.states}
        if self.name is not None:
            given["filter_name"] = {"name": self.name}
        if self.host is not None:
            given["filter_host"] = {"host": self.host}
        if self.since is not None:
            given["filter_since"] = {"since": self.since}
        if self.before is not None:
            given["filter_before"] = {"b_at": self.before[0], "b_id": self.before[1]}
        if not given:
            return sql.SQL(Q["filter_none"]), {}
        clauses = sql.SQL(" AND ").join(sql.SQL(Q[name]) for name in given)
        return clauses, {key: value for params in given.values() for key, value in params.items()}


class SearchesBusy(TasklogError):
    """Every search connection stayed busy."""

    def __init__(self, size: int) -> None:
        super().__init__(
            f"search: the {size} search connections (TASKLOG_API_SEARCH_CONNECTIONS) are busy;"
            " try again in a moment"
        )


class Store:
    """Read access to the collector's schema through one async connection pool.

    Driver errors leave it as the project's errors (`tasklog.core.db.translated`): a missing
    schema is `SchemaMissing` ("run `tasklog migrate`"), a lost server `StoreUnavailable`.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        max_size: int = 10,
        timeout: float = 10.0,
        search_size: int = 2,
        setting: str = db.SETTING,
        prepare: bool = True,
    ) -> None:
        self.conninfo = conninfo
        #: The variable that gave `conninfo`, named by error messages.
        self.setting = setting
        # A malformed URL is one line now, not a pool's warning a second quoting it.
        db.check(conninfo, setting)
        db.hide_secrets_in_driver_logs(conninfo)
        kwargs: dict[str, Any] = {"autocommit": True, "row_factory": dict_row}
        if not prepare:  # TASKLOG_DATABASE_PREPARED_STATEMENTS=false (a pooler in between)
            kwargs["prepare_threshold"] = None
        self.pool = AsyncConnectionPool(
            conninfo,
            min_size=1,
            max_size=max_size,
            timeout=timeout,
            open=False,
            kwargs=kwargs,
            name="tasklog-api",
        )
        #: Searches run here alone: however slow their patterns, the pool above stays free
        #: for the task list, the detail, the streams and the health check.
        self.search_pool = AsyncConnectionPool(
            conninfo,
            min_size=0,
            max_size=search_size,
            timeout=timeout,
            open=False,
            kwargs=kwargs,
            name="tasklog-api-search",
        )

    async def open(self, timeout: float = 10.0) -> None:
        try:
            await self.pool.open(wait=True, timeout=timeout)
            await self.search_pool.open()
        except PoolTimeout:
            await self.pool.close(timeout=1.0)
            # The pool only knows it timed out: one direct attempt says why (refused, login…).
            with db.translated(self.conninfo, self.setting):
                probe = await AsyncConnection.connect(self.conninfo, connect_timeout=5)
            await probe.close()
            raise StoreUnavailable(
                f"{self.setting}: could not connect to {db.where(self.conninfo)} "
                f"within {timeout:g}s"
            ) from None

    async def close(self) -> None:
        await self.search_pool.close(timeout=5.0)
        await self.pool.close(timeout=5.0)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Row]]:
        """A connection for a few statements; driver errors raised in the block translated."""
        with db.translated(self.conninfo, self.setting):
            async with self.pool.connection() as conn:
                # The pool's connections have the dict_row factory (see `__init__`).
                yield cast("psycopg.AsyncConnection[Row]", conn)

    @asynccontextmanager
    async def search_connection(self) -> AsyncIterator[psycopg.AsyncConnection[Row]]:
        """A connection of the search pool; `SearchesBusy` when none frees in time."""
        try:
            conn = await self.search_pool.getconn()
        except PoolTimeout:
            raise SearchesBusy(self.search_pool.max_size) from None
        try:
            with db.translated(self.conninfo, self.setting):
                yield cast("psycopg.AsyncConnection[Row]", conn)
        finally:
            await self.search_pool.putconn(conn)

    async def _all(self, query: sql.Composed, params: Params) -> list[Row]:
        async with self.connection() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchall()

    async def _one(self, query: sql.Composed, params: Params) -> Row | None:
        async with self.connection() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchone()

    async def list_tasks(self, filters: TaskFilter, limit: int) -> list[Row]:
        where, params = filters.where()
        return await self._all(statement("list_tasks", where=where), {**params, "limit": limit})

    async def get_task(self, task_id: str) -> Row | None:
        return await self._one(statement("get_task"), {"task_id": task_id})

    async def task_progress(self, task_id: str) -> Row | None:
        return await self._one(statement("task_progress"), {"task_id": task_id})

    async def tasks_updated_since(self, since: datetime, limit: int = 500) -> list[Row]:
        return await self._all(statement("tasks_updated_since"), {"since": since, "limit": limit})

    async def lines_after(self, task_id: str, after_seq: int, limit: int) -> list[Row]:
        params = {"task_id": task_id, "after_seq": after_seq, "limit": limit}
        return await self._all(statement("lines_after"), params)

    async def collectors(self) -> list[Row]:
        return await self._all(statement("collectors"), {})

    async def server_info(self) -> Row | None:
        return await self._one(statement("server_info"), {})
