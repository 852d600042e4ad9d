"""``GET /tasklog/api/search/``: every stored line matching a substring or a regex, newest first.

Parameters: ``q`` (required), ``regex=1``, the task list's filters ``state``, ``name``,
``host``, plus ``stream``, ``since``, ``until`` (ISO 8601, on the line's time), ``limit`` and
``cursor`` (from the ``next`` link). The body is ``{"results": [match, ...], "next": url|null}``
with each match shaped as `api.find.match_json` says. A pattern Postgres refuses is a 400
whose ``error`` is Postgres's message on one line; a search running past the statement
timeout is a 400 asking for a narrower one.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
from aiohttp import web
from psycopg.rows import dict_row

from api import keys, params
from api.find import MAX_PATTERN, Q, Row, Search, decode_cursor, encode_cursor, match_json, one_line
from api.models import SearchResults
from api.queries import Store
from api.routes import respond
from tasklog.core import db
from tasklog.core.constants import ALL_STATES, STREAMS

SEARCH_DEFAULT, SEARCH_MAX = 50, 500
#: A search may not hold a connection longer than this (a pathological regex on 10M lines).
STATEMENT_TIMEOUT_MS = 30_000


def search_params(request: web.Request) -> Search:
    """The query string as a `Search`, or a 400 naming the bad parameter."""
    text = request.query.get("q", "")
    if not text.strip():
        params.bad("q: expected the text (or, with regex=1, the pattern) to search for")
    if len(text) > MAX_PATTERN or "\x00" in text:
        params.bad(f"q: expected at most {MAX_PATTERN} characters, without NUL")
    regex = request.query.get("regex", "").lower() in ("1", "true", "yes", "on")
    streams = []
    for raw in request.query.getall("stream", []):
        for item in filter(None, (s.strip().lower() for s in raw.split(","))):
            if item not in STREAMS:
                params.bad(f"stream: expected one of {', '.join(STREAMS)} (got {item[:40]!r})")
            streams.append(item)
    before = None
    if raw_cursor := request.query.get("cursor"):
        try:
            before = decode_cursor(raw_cursor)
        except ValueError:
            params.bad("cursor: not a cursor this API handed out (use the `next` link as it is)")
    return Search(
        text=text,
        regex=regex,
        states=params.states(request),
        name=params.text(request, "name"),
        host=params.text(request, "host"),
        streams=streams,
        since=params.timestamp(request, "since"),
        until=params.timestamp(request, "until"),
        before=before,
    )


async def run_search(store: Store, search: Search, limit: int) -> list[Row]:
    """Up to `limit` matches, newest first, window after window until the page is full."""
    found: list[Row] = []
    with db.translated():
        try:
            async with store.connection() as conn, conn.transaction():
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute(Q["statement_timeout"], {"ms": str(STATEMENT_TIMEOUT_MS)})
                now = (await (await cur.execute(Q["now"])).fetchone() or {})["now"]
                for low, high in search.windows(now):
                    query, values = search.statement(low, high, limit - len(found))
                    await cur.execute(query, values)
                    found += await cur.fetchall()
                    if len(found) >= limit:
                        break
        except psycopg.errors.InvalidRegularExpression as exc:
            params.bad(f"q: {one_line(str(exc))}")
        except psycopg.errors.QueryCanceled:
            params.bad(
                f"q: the search took longer than {STATEMENT_TIMEOUT_MS // 1000} s;"
                " narrow it (a longer text, since/until, a task name)"
            )
    return found


async def search_lines(request: web.Request) -> web.Response:
    limit = params.integer(request, "limit", SEARCH_DEFAULT, 1, SEARCH_MAX)
    search = search_params(request)
    rows = await run_search(request.app[keys.STORE], search, limit + 1)
    next_url = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_url = str(request.url.update_query(cursor=encode_cursor(rows[-1])))
    body = {"results": [match_json(row) for row in rows], "next": next_url}
    return respond(SearchResults.model_validate(body))


async def render_page(request: web.Request) -> web.Response:
    """``GET /tasklog/search/`` (via `api.views`): the form and the first page of matches."""
    pages = request.app[keys.PAGES]
    query = {k: v for k, v in request.query.items() if k != "cursor"}
    ctx: dict[str, Any] = {
        "query": query,
        "states": sorted(ALL_STATES),
        "streams": STREAMS,
        "matches": [],
        "next": None,
        "error": None,
        "searched": bool(request.query.get("q", "").strip()),
        "title": "Search",
    }
    if ctx["searched"]:
        try:
            search = search_params(request)
            rows = await run_search(request.app[keys.STORE], search, SEARCH_DEFAULT + 1)
        except web.HTTPBadRequest as exc:
            ctx["error"] = json.loads(exc.text or "{}").get("error", "bad search")
        else:
            if len(rows) > SEARCH_DEFAULT:
                rows = rows[:SEARCH_DEFAULT]
                cursor = encode_cursor(rows[-1])
                ctx["next"] = str(request.rel_url.update_query(cursor=cursor))
            ctx["matches"] = [match_json(row) for row in rows]
    return pages.render(request, "search.html", **ctx)
