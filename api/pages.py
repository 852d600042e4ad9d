"""Server-rendered pages: Jinja2 templates with autoescaping; plain JS and CSS, no build step.

Templates never mark log text safe: lines reach the page through JSON and are put into the
DOM with ``textContent`` by ``static/ansi.js``.

The scripts know the state and stream names only from the page: `page_constants` is served in
each page as a JSON blob (``#tasklog-constants``), which ``static/constants.js`` reads.
"""

from __future__ import annotations

import jinja2
from aiohttp import web

from tasklog.core.constants import (
    FINISHED_STATES,
    MARKER,
    PENDING,
    STATES,
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
        "streams": list(TASK_STREAMS),
        "marker": MARKER,
    }


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
