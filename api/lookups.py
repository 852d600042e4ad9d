"""Finding lines and tasks: search over every stored line, a task's runs, a workflow's tasks.

The queries live in ``sql/lookups.sql``; this module composes them (psycopg only, no web server),
so the API's routes and the command line (`tasklog grep`, `tasklog logs --root`) run the same
SQL. The JSON shape of a search match, shared by the API and ``tasklog grep --json``::

    {"task_id", "task_name", "seq", "stream", "level", "timestamp", "message",
     "match": [start, end]}

``match`` is the first matched span of ``message`` in characters, end exclusive.

A search walks back in time windows and stops as soon as a page is full: the newest day cut
along its trigram slices (`tasklog.core.trigram`: the minutes not indexed yet are scanned, every
other window is one partial-index lookup), the week before it, then the rest (a day index per
partition). A common word fills its first page from the newest minutes alone, which run as
statements of their own; every older window goes in one statement (`Search.groups`), so a rare
text that walks them all costs one plan and one round trip for them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from tasklog.core import db, trigram
from tasklog.core.constants import FINISHED_STATES, RETRY, task_id_problem

Row = dict[str, Any]

Q = db.queries("api", "sql/lookups.sql")
MAX_PATTERN = 1000
#: How far back each window reaches below the days cut along their slices (then: the rest).
WINDOWS = (timedelta(days=7),)
#: Windows searched one statement each, newest first, before the rest go in one statement:
#: the lines stamped after now and the newest minutes, not indexed yet.
ALONE = 2
#: Every task of a workflow shown at most (a workflow of more is cut, and says so).
WORKFLOW_TASKS_MAX = 5000


class BadSearch(ValueError):
    """A pattern Postgres refused (one line, from its error message)."""


@dataclass
class Search:
    """What to look for, and where; already validated."""

    text: str
    regex: bool = False
    states: Sequence[str] = ()
    name: str | None = None
    host: str | None = None
    streams: Sequence[str] = ()
    since: datetime | None = None
    until: datetime | None = None
    before: tuple[datetime, str, int] | None = None

    def statement(
        self, low: datetime | None, high: datetime | None, limit: int
    ) -> tuple[sql.Composed, dict[str, Any]]:
        """The search in one time window ``[low, high)`` (either end open when None), and its
        parameters."""
        params: dict[str, Any] = {"limit": limit}
        if self.regex:
            match, span = Q["match_regex"], Q["span_regex"]
            params["pattern"] = self.text
        else:
            match, span = Q["match_substring"], Q["span_substring"]
            params["like"] = "%" + like_escape(self.text) + "%"
            params["text"] = self.text
        # Each filter given adds its fragment of lookups.sql and its parameters.
        task: dict[str, dict[str, Any]] = {}
        if self.states:
            task["filter_task_states"] = {"states": list(self.states)}
        if self.name is not None:
            task["filter_task_name"] = {"name": self.name}
        if self.host is not None:
            task["filter_task_host"] = {"host": self.host}
        line: dict[str, dict[str, Any]] = {}
        if self.streams:
            line["filter_streams"] = {"streams": list(self.streams)}
        if self.since is not None:
            line["filter_since"] = {"since": self.since}
        if self.until is not None:
            line["filter_until"] = {"until": self.until}
        if self.before is not None:
            b_ts, b_id, b_seq = self.before
            line["filter_before"] = {"b_ts": b_ts, "b_id": b_id, "b_seq": b_seq}
        clauses: list[sql.Composable] = [sql.SQL(Q[name]) for name in line]
        # The window's ends are literals: Postgres then sees that a window lies inside a slice
        # of the day and may use the slice's partial index (a bound value would let a generic
        # plan of a prepared statement skip it).
        if low is not None:
            clauses.append(sql.SQL(Q["filter_window_low"]).format(w_low=sql.Literal(low)))
        if high is not None:
            clauses.append(sql.SQL(Q["filter_window_high"]).format(w_high=sql.Literal(high)))
        if task:
            # A semi-join, so that the page is still cut right above its sort.
            task_where = sql.SQL(" AND ").join(sql.SQL(Q[name]) for name in task)
            clauses.append(sql.SQL(Q["filter_task"]).format(task_where=task_where))
        for given in (*task.values(), *line.values()):
            params.update(given)
        where = sql.SQL(" AND ").join(clauses) if clauses else sql.SQL(Q["filter_none"])
        match_sql, span_sql = sql.SQL(match), sql.SQL(span)
        return sql.SQL(Q["search"]).format(match=match_sql, span=span_sql, where=where), params

    def statement_for(
        self, windows: Sequence[tuple[datetime | None, datetime | None]], limit: int
    ) -> tuple[sql.Composed, dict[str, Any]]:
        """The search over `windows` in one statement: one window's `statement`, or several
        windows' pages joined (their parameters are the same), then the page."""
        if len(windows) == 1:
            return self.statement(*windows[0], limit)
        pages: list[sql.Composable] = []
        params: dict[str, Any] = {}
        for low, high in windows:
            query, values = self.statement(low, high, limit)
            pages.append(sql.SQL("({})").format(query))
            params.update(values)
        return sql.SQL(Q["search_windows"]).format(pages=sql.SQL(" UNION ALL ").join(pages)), params

    def groups(
        self, now: datetime, indexes: Sequence[str] = ()
    ) -> list[list[tuple[datetime | None, datetime | None]]]:
        """`windows` as the search runs them: the newest `ALONE` one statement each (a common
        text fills its page there), then all the others in one statement."""
        windows = self.windows(now, indexes)
        rest = [windows[ALONE:]] if windows[ALONE:] else []
        return [[window] for window in windows[:ALONE]] + rest

    def windows(
        self, now: datetime, indexes: Sequence[str] = ()
    ) -> list[tuple[datetime | None, datetime | None]]:
        """The time windows to search, newest first, within ``since``.

        `indexes` names the valid trigram indexes (`tasklog.core.trigram`). The day of the top
        and the day before, unless a day index covers them, are cut along their slices, so
        that each window lies inside one slice (Postgres uses its partial index) or between
        them (scanned: the newest minutes, or what is not indexed yet). Older days go in two
        windows (the week before, then the rest), one day index per partition.
        """
        top = now
        if self.until is not None:
            top = min(top, self.until)
        if self.before is not None:
            # Up to the cursor's line's time included: lines stamped in the same microsecond
            # sort on by task and seq (`filter_before`), and a window's top is excluded.
            top = min(top, self.before[0] + timedelta(microseconds=1))
        days: set[date] = set()
        slices: list[trigram.Slice] = []
        for name in indexes:
            parsed = trigram.parse(name)
            if isinstance(parsed, trigram.Slice):
                slices.append(parsed)
            elif parsed is not None:
                days.add(parsed)
        # Lines stamped after now (a worker's clock ahead) are still found.
        out: list[tuple[datetime | None, datetime | None]] = [(top, None)] if top == now else []
        floor = self.since
        cursor = top
        for _ in range(2):
            day = (cursor - timedelta(microseconds=1)).astimezone(UTC).date()  # below cursor
            if day in days or (floor is not None and cursor <= floor):
                break
            bottom = trigram.midnight(day)
            if floor is not None:
                bottom = max(bottom, floor)
            out += _cover(bottom, cursor, slices)
            cursor = bottom
        if floor is not None and cursor <= floor:
            return out or [(None, None)]
        for reach in WINDOWS:
            low = cursor - reach
            if floor is not None and low <= floor:
                break
            out.append((low, cursor))
            cursor = low
        out.append((None, cursor))
        return out


def _cover(
    bottom: datetime, top: datetime, slices: Sequence[trigram.Slice]
) -> list[tuple[datetime | None, datetime | None]]:
    """Windows from `top` down to `bottom`, each inside one slice (the widest there is) or
    in a gap between them."""
    out: list[tuple[datetime | None, datetime | None]] = []
    cursor = top
    while cursor > bottom:
        around = [s.low for s in slices if s.low < cursor <= s.high]
        if around:
            low = max(bottom, min(around))
        else:
            low = max([bottom, *(s.high for s in slices if s.high < cursor)])
        out.append((low, cursor))
        cursor = low
    return out


def like_escape(text: str) -> str:
    """`text` as a literal inside a LIKE pattern (backslash is LIKE's default escape)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def one_line(message: str) -> str:
    """A Postgres error message made one line (regex errors say where, over two lines)."""
    return " ".join(part.strip() for part in message.strip().splitlines() if part.strip())


def match_json(row: Row) -> dict[str, Any]:
    start, end = row["span_start"], row["span_end"]
    return {
        "task_id": row["task_id"],
        "task_name": row["task_name"],
        "seq": row["seq"],
        "stream": row["stream"],
        "level": row["level"],
        "timestamp": row["ts"].isoformat(),
        "message": row["message"],
        "match": [start, end] if start is not None and start >= 0 else None,
    }


#: Times a parameter or a cursor may name: beyond them, date arithmetic overflows (year 1)
#: or Postgres refuses the value (past its timestamptz range once an offset is applied).
EARLIEST_TIME = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TIME = datetime(3000, 1, 1, tzinfo=UTC)


def sane_time(value: datetime) -> bool:
    """An aware time within `EARLIEST_TIME`..`LATEST_TIME`."""
    return value.tzinfo is not None and EARLIEST_TIME <= value < LATEST_TIME


def encode_cursor(row: Row) -> str:
    raw = json.dumps([row["ts"].isoformat(), row["task_id"], row["seq"]]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(raw: str) -> tuple[datetime, str, int]:
    """A search cursor back into ``(ts, task_id, seq)``; ValueError when it is not one."""
    try:
        decoded = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        ts, task_id, seq = json.loads(decoded)
        value = datetime.fromisoformat(ts)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ValueError(raw) from exc
    # Each value as the API handed it out: an id Postgres can store (no NUL, no lone
    # surrogate), a seq that is an integer of bigint (not `true`), a time in range.
    if (
        task_id_problem(task_id) is not None
        or type(seq) is not int
        or not 0 <= seq < 2**63
        or not sane_time(value)
    ):
        raise ValueError(raw)
    return value, task_id, seq


# -- workflows: a merged stream's cursor -----------------------------------------------------


def task_key(task_id: str) -> str:
    """A short stable name of a task inside a workflow cursor (10 hex digits)."""
    return hashlib.blake2s(task_id.encode("utf-8", "surrogatepass"), digest_size=5).hexdigest()


class WorkflowCursor:
    """Where a merged stream of several tasks stands: the last seq sent of each task.

    As an SSE ``id:`` it is ``key:seq`` pairs joined by ``.`` (``key`` = `task_key`), so a
    browser that reconnects with Last-Event-ID resumes every task exactly where it was: no
    line twice, none missing, whatever order the tasks' lines were stored in.
    """

    def __init__(self, seqs: dict[str, int] | None = None) -> None:
        self.seqs: dict[str, int] = dict(seqs or {})

    def after(self, task_id: str) -> int:
        return self.seqs.get(task_key(task_id), 0)

    def advance(self, task_id: str, seq: int) -> None:
        self.seqs[task_key(task_id)] = seq

    def encode(self) -> str:
        return ".".join(f"{key}:{seq}" for key, seq in sorted(self.seqs.items()))

    @classmethod
    def decode(cls, raw: str) -> WorkflowCursor:
        seqs: dict[str, int] = {}
        for part in filter(None, raw.strip().split(".")):
            key, sep, seq = part.partition(":")
            if (
                not sep
                or len(key) != 10
                or not all(c in "0123456789abcdef" for c in key)
                or not seq.isdigit()
                or len(seq) > 18
            ):
                raise ValueError(raw)
            seqs[key] = int(seq)
        return cls(seqs)


async def fetch(
    pool: AsyncConnectionPool[Any], query: str | sql.Composed, params: dict[str, Any]
) -> list[Row]:
    """Rows of one read through the API's pool, driver errors in the project's words."""
    with db.translated():
        async with pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(query, params)
            rows: list[Row] = await cur.fetchall()
            return rows


async def workflow_of(pool: AsyncConnectionPool[Any], task: Row | None) -> str | None:
    """The root id of the workflow `task` belongs to, or None for a task alone."""
    if task is None or not task.get("root_id"):
        return None
    root: str = task["root_id"]
    if root != task["task_id"]:
        return root
    rows = await fetch(pool, Q["workflow_size"], {"root_id": root})
    return root if rows[0]["n"] > 1 else None


async def workflow_roots(pool: AsyncConnectionPool[Any], task_ids: list[str]) -> set[str]:
    """Those of `task_ids` that are the root of a workflow of more than one task."""
    rows = await fetch(pool, Q["workflow_roots"], {"task_ids": task_ids})
    return {row["root_id"] for row in rows}


# -- runs of a task ----------------------------------------------------------------------------


async def runs(pool: AsyncConnectionPool[Any], task_id: str) -> list[dict[str, Any]]:
    return runs_json(await fetch(pool, Q["runs"], {"task_id": task_id}))


def runs_json(rows: list[Row]) -> list[dict[str, Any]]:
    """A task's runs as the API shows them: a run that a later one replaced was retried,
    even when its own end record arrived too late to say so."""
    out = []
    for i, row in enumerate(rows):
        run = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}
        if i + 1 < len(rows) and run["state"] not in FINISHED_STATES:
            run["state"] = RETRY
        out.append(run)
    return out
