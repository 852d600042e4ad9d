"""Server-rendered pages: Jinja2 templates with autoescaping; plain JS and CSS, no build step.

Templates never mark log text safe: lines reach the page through JSON and are put into the
DOM with ``textContent`` by ``static/ansi.js``.

The scripts know the state and stream names only from the page: `page_constants` is served in
each page as a JSON blob (``#tasklog-constants``), which ``static/constants.js`` reads.
"""

from __future__ import annotations

import json
import re
from urllib.parse import quote

import jinja2
from aiohttp import web

from tasklog.core.constants import (
    ERROR_LEVELS,
    FINISHED_STATES,
    LEVELS,
    MARKER,
    PENDING,
    RETRY,
    STATES,
    STREAMS,
    SUCCESS,
    TASK_STREAMS,
    UNSUCCESSFUL_STATES,
)


def page_constants() -> dict[str, str | list[str]]:
    """The shared names the pages' scripts use, from their owner `tasklog.core.constants`."""
    return {
        "states": list(STATES),
        "finished": sorted(FINISHED_STATES),
        "unsuccessful": sorted(UNSUCCESSFUL_STATES),
        "success": SUCCESS,
        "pending": PENDING,
        "retry": RETRY,
        "streams": list(TASK_STREAMS),
        "marker": MARKER,
        "levels": list(LEVELS),
        "error_levels": list(ERROR_LEVELS),
    }


#: The names data may bring into a class attribute, by kind: anything else is ``<kind>-other``.
KNOWN = {"state": STATES, "stream": STREAMS, "level": LEVELS}


def css_class(kind: str, value: object) -> str:
    """The page's class for a state, stream or level: ``state-failure``, ``stream-log``.

    A name from the data never becomes a class of its own: one outside the known set (a custom
    state, a level of a custom logger) is ``<kind>-other``, so no value can collide with the
    page's own classes. ``static/constants.js`` (`tasklogClass`) does the same in the browser.
    """
    name = str(value) if value is not None else ""
    return f"{kind}-{name.lower()}" if name in KNOWN[kind] else f"{kind}-other"


def segment(value: object) -> str:
    """Text quoted for one path segment or query value of a link: Jinja's own `urlencode`
    leaves ``/`` (and an id holding one would name another path)."""
    return quote(str(value), safe="")


class Pages:
    def __init__(self, prefix: str, demo_launch: bool = False, login: bool = False) -> None:
        self.prefix = prefix
        self.demo_launch = demo_launch
        self.login = login
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("api", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.env.filters["when"] = when
        self.env.filters["urlencode"] = segment
        self.env.filters["css"] = lambda value, kind: css_class(kind, value)
        self.env.filters["size"] = size
        self.env.filters["plain"] = plain
        self.env.filters["stat"] = stat
        self.env.globals["stat_labels"] = STAT_LABELS
        self.env.globals["stat_alarms"] = STAT_ALARMS
        self.env.globals["stat_shown"] = {key for key, _, _ in STAT_LABELS} | STAT_FIRST
        self.env.globals["constants"] = page_constants()

    def render(
        self, request: web.Request, name: str, status: int = 200, **ctx: object
    ) -> web.Response:
        html = self.env.get_template(name).render(
            prefix=self.prefix,
            demo_launch=self.demo_launch,
            login=self.login,
            request=request,
            **ctx,
        )
        response = web.Response(text=html, content_type="text/html", status=status)
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
            " object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        return response


def when(value: str | None) -> str:
    """An ISO 8601 time as ``2024-05-01 12:00:03`` (UTC), or a dash."""
    return value[:19].replace("T", " ") if value else "—"


#: A collector's heartbeat stats as the diagnostic page names them, in its order (after the
#: backlog and the quarantine, which come first): key, label, unit ("bytes" or "").
STAT_LABELS = (
    ("lines", "Lines stored", ""),
    ("batches", "Batches committed", ""),
    ("files_done", "Spool files finished", ""),
    ("store_failures", "Store failures", ""),
    ("corrupt", "Corrupt records", ""),
    ("lost", "Lost records", ""),
    ("vanished", "Spool files vanished", ""),
    ("truncated", "Spool files truncated", ""),
    ("skipped_bytes", "Skipped", "bytes"),
    ("spool_free_bytes", "Spool free space", "bytes"),
    ("spool_full", "Spool full", ""),
)
#: Stats shown in the first rows, with the backlog.
STAT_FIRST = {"quarantined", "quarantine_dir", "status"}
#: Stats that are a problem when not zero.
STAT_ALARMS = {"store_failures", "corrupt", "lost", "vanished", "truncated", "spool_full"}


def size(value: object) -> str:
    """A byte count a person reads: ``0 B``, ``512 B``, ``3.4 MB``."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "—"
    n = float(value)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def stat(value: object, unit: str = "") -> str:
    """A stat a collector reported, as text: numbers grouped, yes/no, a dash for nothing.

    An older or newer collector may send any JSON: what is not a number, a flag or text is
    shown as its JSON."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return size(value) if unit == "bytes" else f"{value:,}"
    if isinstance(value, str):
        return value
    return json.dumps(value)


#: Terminal escape sequences (CSI such as colours, OSC such as titles, two-character ones).
ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_]|$)")


def plain(text: str) -> str:
    """A line's text without its terminal escapes (the search page shows text, not colours)."""
    return ESCAPES.sub("", text)
