"""`tasklog grep PATTERN`: the API's search from the terminal, straight from Postgres.

Runs the very queries of ``GET /tasklog/api/search/`` (`api.lookups`). Prints one match per line,
newest first: time, task id, task name, seq and the line with the match in bold red when the
output is a terminal; ``--json`` prints one object per match, shaped as the API's. Exits 1
when nothing matched, as grep does.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from api.lookups import Q, Search, match_json, one_line
from tasklog.core import db
from tasklog.core.errors import TasklogError
from tasklog.core.terminal import for_terminal, json_for_terminal

PAGE = 500
_RELATIVE = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class BadPattern(TasklogError):
    """Postgres refused the pattern."""


def parse_time(text: str) -> datetime:
    """An ISO 8601 time, or a span back from now such as ``90s``, ``15m``, ``2h``, ``3d``."""
    text = text.strip()
    if m := _RELATIVE.fullmatch(text):
        return datetime.now(UTC) - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        problem = f"expected an ISO 8601 time or a span like 15m, 2h, 3d (got {text!r})"
        raise ValueError(problem) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def search(url: str, search: Search, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` matches, newest first (the API's windows and keyset, in one process)."""
    found: list[dict[str, Any]] = []
    with db.connect(url, row_factory=dict_row) as conn, db.translated(url):
        try:
            clock = conn.execute(Q["now"]).fetchone() or {}
            for group in search.groups(clock["now"], clock["indexes"]):
                query, values = search.statement_for(group, limit - len(found))
                found += conn.execute(query, values).fetchall()
                if len(found) >= limit:
                    break
        except psycopg.errors.InvalidRegularExpression as exc:
            raise BadPattern(f"bad pattern: {one_line(str(exc))}") from None
    return found[:limit]


def print_matches(rows: list[dict[str, Any]], *, as_json: bool, colour: bool) -> None:
    for row in rows:
        match = match_json(row)
        if as_json:
            print(json_for_terminal(json.dumps(match, ensure_ascii=False)))
            continue
        message = match["message"]
        if colour and match["match"]:
            start, end = match["match"]
            message = f"{message[:start]}\x1b[1;31m{message[start:end]}\x1b[0m{message[end:]}"
        stamp = row["ts"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        name = (match["task_name"] or "")[:28]
        print(for_terminal(f"{stamp}  {match['task_id']}  {name}  #{match['seq']}  {message}"))


def run(url: str, search_: Search, *, limit: int, as_json: bool) -> int:
    rows = search(url, search_, limit)
    print_matches(rows, as_json=as_json, colour=sys.stdout.isatty() and not as_json)
    return 0 if rows else 1
