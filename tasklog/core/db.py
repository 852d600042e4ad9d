"""The database boundary: named queries, connections, and driver errors in the project's words.

Every component that talks to Postgres (the collector, the API, `migrate`, the CLI, the demo)
loads its SQL with `queries` and wraps its driver calls in `translated`, so a user reads one
line naming what to fix ("TASKLOG_DATABASE_URL: could not connect to 127.0.0.1:5432 (connection
refused)"), never a psycopg traceback. Errors that say something about the data itself
(`psycopg.DataError`, an integrity error) are not translated: the caller decides about them.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import TypeVar, overload

import psycopg
from psycopg import AsyncConnection, Connection
from psycopg import conninfo as pg_conninfo
from psycopg.rows import AsyncRowFactory, RowFactory, TupleRow
from psycopg_pool import PoolTimeout

from tasklog.core.constants import SQL_NAMES
from tasklog.core.errors import (
    ConfigError,
    SchemaMissing,
    StorePermissionDenied,
    StoreUnavailable,
)
from tasklog.core.settings import scrub

#: The variable a user fixes when the database cannot be used.
SETTING = "TASKLOG_DATABASE_URL"

#: Executions of a statement after which psycopg prepares it (psycopg's own default).
PREPARE_THRESHOLD = 5
#: A libpq connection parameter's value (``connect_timeout=5``, ``application_name="x"``).
ConnParam = str | int | None
R = TypeVar("R")

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
#: A shared name in SQL text: ``:'LOST'`` (never the second colon of a ``::`` cast).
_SHARED_NAME = re.compile(r"(?<!:):'([A-Z][A-Z_]*)'")


@functools.cache
def queries(package: str, filename: str = "queries.sql") -> dict[str, str]:
    """The ``-- name: x`` sections of a package's SQL file, by name; read once per process.

    A section runs from its header to the next one; its text is the query.
    """
    text = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
    parts = _HEADER.split(render(text))
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def render(text: str) -> str:
    """SQL text with each shared name ``:'NAME'`` replaced by its value as a quoted literal
    (`tasklog.core.constants.SQL_NAMES`), so that no ``.sql`` file re-types a state."""

    def literal(match: re.Match[str]) -> str:
        name = match[1]
        if name not in SQL_NAMES:
            raise KeyError(f":'{name}' in SQL is not a name of tasklog.core.constants.SQL_NAMES")
        return "'" + SQL_NAMES[name].replace("'", "''") + "'"

    return _SHARED_NAME.sub(literal, text)


def _params(conninfo: str) -> dict[str, object]:
    try:
        return dict(pg_conninfo.conninfo_to_dict(conninfo))
    except psycopg.ProgrammingError:
        return {}


def where(conninfo: str) -> str:
    """``host:port`` of a connection string, for messages (never its password)."""
    params = _params(conninfo)
    if not params:
        return "the configured server"
    hosts = str(params.get("host") or "localhost").split(",")
    ports = str(params.get("port") or "5432").split(",")
    if len(ports) == 1:
        ports *= len(hosts)
    # A multi-host URL (failover): each host with its own port, as libpq pairs them.
    return ",".join(
        host if host.startswith("/") else f"{host}:{port or '5432'}"
        for host, port in zip(hosts, ports + [""] * (len(hosts) - len(ports)), strict=False)
    )


def _database(conninfo: str | None) -> str:
    """'database "x" on host:port', or 'the database' when the conninfo says nothing."""
    if not conninfo:
        return "the database"
    name = _params(conninfo).get("dbname")
    return (
        f'database "{name}" on {where(conninfo)}' if name else f"the database on {where(conninfo)}"
    )


def _reason(exc: BaseException) -> str:
    """The cause in a driver message: "connection refused", "database "x" does not exist"."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    # libpq: 'connection to server at "h" (ip), port p failed: <cause>', then hints.
    failed = [line for line in lines if " failed: " in line]
    cause = failed[-1].rsplit(" failed: ", 1)[-1] if failed else lines[0]
    cause = cause.removeprefix("FATAL:").strip().rstrip(".")
    return cause[:1].lower() + cause[1:]


def translate(exc: BaseException, conninfo: str | None = None, setting: str = SETTING) -> Exception:
    """The project's error for a driver error, or `exc` itself when it is about the data;
    its message names `setting`, the variable that gave `conninfo`, and never holds the
    connection string's password (a driver may quote it)."""
    error = _translate(exc, conninfo, setting)
    if conninfo and error is not exc:
        error.args = (scrub(str(error), conninfo),)
    return error


def _translate(exc: BaseException, conninfo: str | None, setting: str) -> Exception:
    place = f" to {where(conninfo)}" if conninfo else ""
    if isinstance(exc, PoolTimeout):
        return StoreUnavailable(f"{setting}: no connection{place} became free in time ({exc})")
    if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.InvalidSchemaName):
        return SchemaMissing(
            f"{setting}: {_database(conninfo)} has no tasklog schema: run `tasklog migrate`"
        )
    if isinstance(exc, psycopg.errors.UndefinedFunction | psycopg.errors.UndefinedColumn):
        return SchemaMissing(
            f"{setting}: {_database(conninfo)} has an older tasklog schema ({_reason(exc)}): "
            "run `tasklog migrate`"
        )
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return exc  # a statement timeout or a cancel: the caller knows which statement
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        reason = _reason(exc)  # "permission denied for table tasks", usually
        if not reason.startswith("permission denied"):
            reason = f"permission denied ({reason})"
        return StorePermissionDenied(f"{setting}: {reason}")
    if isinstance(exc, psycopg.errors.InvalidAuthorizationSpecification):
        return StorePermissionDenied(f"{setting}: login refused ({_reason(exc)})")
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return StoreUnavailable(f"{setting}: could not connect{place} ({_reason(exc)})")
    return exc if isinstance(exc, Exception) else RuntimeError(str(exc))


@contextmanager
def translated(conninfo: str | None = None, setting: str = SETTING) -> Iterator[None]:
    """Run a block of driver calls (sync or async code alike), raising the project's errors
    (their messages name `setting`)."""
    try:
        yield
    except (psycopg.Error, PoolTimeout) as exc:
        error = translate(exc, conninfo, setting)
        if error is exc:
            raise
        raise error from exc


@overload
def connect(conninfo: str, *, row_factory: RowFactory[R], **params: ConnParam) -> Connection[R]: ...
@overload
def connect(
    conninfo: str, *, row_factory: None = None, **params: ConnParam
) -> Connection[TupleRow]: ...
def connect(
    conninfo: str, *, row_factory: RowFactory[R] | None = None, **params: ConnParam
) -> Connection[R] | Connection[TupleRow]:
    """A synchronous autocommit connection, or one line saying why there is none.

    `params` are libpq's (``application_name``; ``connect_timeout`` is 5 unless given). It
    prepares no statement: the short sessions that use it (the command line, migrations, the
    index builder) gain nothing from it, and they work behind any pooler.
    """
    conninfo = _with_params(conninfo, params)
    with translated(conninfo):
        if row_factory is None:
            return psycopg.connect(conninfo, autocommit=True, prepare_threshold=None)
        return psycopg.connect(
            conninfo, autocommit=True, row_factory=row_factory, prepare_threshold=None
        )


@overload
async def aconnect(
    conninfo: str, *, row_factory: AsyncRowFactory[R], prepare: bool = True, **params: ConnParam
) -> AsyncConnection[R]: ...
@overload
async def aconnect(
    conninfo: str, *, row_factory: None = None, prepare: bool = True, **params: ConnParam
) -> AsyncConnection[TupleRow]: ...
async def aconnect(
    conninfo: str,
    *,
    row_factory: AsyncRowFactory[R] | None = None,
    prepare: bool = True,
    **params: ConnParam,
) -> AsyncConnection[R] | AsyncConnection[TupleRow]:
    """An async autocommit connection, or one line saying why there is none (as `connect`).

    `prepare`: psycopg prepares what it runs often (TASKLOG_DATABASE_PREPARED_STATEMENTS);
    off behind a pooler that keeps no prepared statement across transactions.
    """
    conninfo = _with_params(conninfo, params)
    threshold = PREPARE_THRESHOLD if prepare else None
    with translated(conninfo):
        if row_factory is None:
            return await AsyncConnection.connect(
                conninfo, autocommit=True, prepare_threshold=threshold
            )
        return await AsyncConnection.connect(
            conninfo, autocommit=True, row_factory=row_factory, prepare_threshold=threshold
        )


def _with_params(conninfo: str, params: dict[str, ConnParam], setting: str = SETTING) -> str:
    params.setdefault("connect_timeout", 5)
    try:
        return pg_conninfo.make_conninfo(conninfo, **params)
    except psycopg.ProgrammingError as exc:
        reason = scrub(str(exc).strip(), conninfo)
        raise ConfigError(f"{setting}: not a Postgres URL or conninfo ({reason})") from None


def check(conninfo: str, setting: str = SETTING) -> None:
    """A `ConfigError` (one line, no password) when `conninfo` is not a connection string;
    for code that hands it to a pool, which would only log warnings, each quoting it."""
    _with_params(conninfo, {}, setting)


class SecretsFilter(logging.Filter):
    """Masks a connection string's secrets in the records of a driver's logger (psycopg's
    pool logs each failed attempt with the driver's message, which may quote the URL)."""

    def __init__(self, conninfo: str) -> None:
        super().__init__()
        self.conninfo = conninfo

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = scrub(message, self.conninfo)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


def hide_secrets_in_driver_logs(conninfo: str) -> None:
    """Install a `SecretsFilter` for `conninfo` on psycopg's loggers (once per conninfo)."""
    for name in ("psycopg", "psycopg.pool"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, SecretsFilter) and f.conninfo == conninfo for f in logger.filters):
            logger.addFilter(SecretsFilter(conninfo))
