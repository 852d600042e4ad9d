"""``GET /tasklog/api/search/``: every stored line matching a substring or a regex, newest first.

Parameters: ``q`` (required), ``regex=1``, the task list's filters ``state``, ``name``,
``host``, plus ``stream``, ``since``, ``until`` (ISO 8601, on the line's time), ``limit`` and
``cursor`` (from the ``next`` link). The body is ``{"results": [match, ...], "next": url|null}``
with each match shaped as `api.lookups.match_json` says. A pattern Postgres refuses is a 400
whose ``error`` is Postgres's message on one line; a search running past its statement
timeout (`TASKLOG_API_SEARCH_TIMEOUT`, `TASKLOG_API_REGEX_TIMEOUT` for a regex) is a 400
asking for a narrower one. Searches run on a small pool of their own
(`TASKLOG_API_SEARCH_CONNECTIONS`): when every one is busy, a 503 with ``Retry-After``; the
other routes never wait for them. A client that goes away cancels its search in Postgres.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import psycopg
from aiohttp import web
from psycopg.rows import dict_row

from api import keys, params
from api.lookups import (
    MAX_PATTERN,
    Q,
    Row,
    Search,
    decode_cursor,
    encode_cursor,
    match_json,
    one_line,
)
from api.models import SearchResults
from api.queries import SearchesBusy, Store
from api.routes import respond
from tasklog.core import db
from tasklog.core.constants import ALL_STATES, STREAMS

log = logging.getLogger("tasklog.api")

SEARCH_DEFAULT, SEARCH_MAX = 50, 500
#: How often a running search looks whether its client is still there.
_CLIENT_CHECK = 0.2


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


async def run_search(store: Store, search: Search, limit: int, timeout: float) -> list[Row]:
    """Up to `limit` matches, newest first, window after window until the page is full; on a
    connection of the search pool, each statement cancelled after `timeout` seconds."""
    found: list[Row] = []
    with db.translated():
        try:
            async with store.search_connection() as conn, conn.transaction():
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute(Q["statement_timeout"], {"ms": str(int(timeout * 1000))})
                clock = await (await cur.execute(Q["now"])).fetchone() or {}
                for group in search.groups(clock["now"], clock["indexes"]):
                    query, values = search.statement_for(group, limit - len(found))
                    # Never prepared: a generic plan, blind to the pattern, could read a whole
                    # hour by time where the slice's trigram index finds a rare text at once.
                    await cur.execute(query, values, prepare=False)
                    found += await cur.fetchall()
                    if len(found) >= limit:
                        break
        except psycopg.errors.InvalidRegularExpression as exc:
            params.bad(f"q: {one_line(str(exc))}")
        except psycopg.errors.QueryCanceled:
            params.bad(
                f"q: the search took longer than {timeout:g} s;"
                " narrow it (a longer text, since/until, a task name)"
            )
        except SearchesBusy as exc:
            params.error(web.HTTPServiceUnavailable, str(exc), {"Retry-After": "5"})
    return found


async def searched(request: web.Request, search: Search, limit: int) -> list[Row]:
    """`run_search` for a request, cancelled (in Postgres too: psycopg cancels the running
    statement) as soon as the client goes away; aiohttp would let it run to its timeout."""
    settings = request.app[keys.SETTINGS]
    timeout = settings.api_regex_timeout if search.regex else settings.api_search_timeout
    task = asyncio.create_task(
        run_search(request.app[keys.STORE], search, limit, timeout), name="search"
    )
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=_CLIENT_CHECK)
            if done:
                return task.result()
            transport = request.transport
            if transport is None or transport.is_closing():
                log.info("a search was cancelled: its client went away")
                # Nobody reads this answer; it only ends the request without a traceback.
                params.error(web.HTTPBadRequest, "the client went away during its search")
    finally:
        if not task.done():
            task.cancel()
            # Bounded: psycopg waits for the server to confirm the cancel (5 s at most).
            await asyncio.wait({task}, timeout=10)


async def search_lines(request: web.Request) -> web.Response:
    limit = params.integer(request, "limit", SEARCH_DEFAULT, 1, SEARCH_MAX)
    search = search_params(request)
    rows = await searched(request, search, limit + 1)
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
            rows = await searched(request, search, SEARCH_DEFAULT + 1)
        except web.HTTPBadRequest as exc:
            ctx["error"] = json.loads(exc.text or "{}").get("error", "bad search")
        else:
            if len(rows) > SEARCH_DEFAULT:
                rows = rows[:SEARCH_DEFAULT]
                cursor = encode_cursor(rows[-1])
                ctx["next"] = str(request.rel_url.update_query(cursor=cursor))
            ctx["matches"] = [match_json(row) for row in rows]
    return pages.render(request, "search.html", **ctx)
