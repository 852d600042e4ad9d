"""Server-rendered pages: Jinja2 templates with autoescaping; plain JS and CSS, no build step.

Templates never mark log text safe: lines reach the page through JSON and are put into the
DOM with ``textContent`` by ``static/ansi.js``.
"""

from __future__ import annotations

from typing import Any

import jinja2
from aiohttp import web


class Pages:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("api", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.env.filters["when"] = when

    def render(
        self, request: web.Request, name: str, status: int = 200, **ctx: Any
    ) -> web.Response:
        html = self.env.get_template(name).render(prefix=self.prefix, request=request, **ctx)
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
