"""`TASKLOG_API_TOKEN`: every route but health and the login page requires it.

A client sends ``Authorization: Bearer <token>``; a browser logs in once through the login
page, which sets an HttpOnly cookie (EventSource cannot send headers). The cookie holds an
HMAC of the token, not the token itself.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from aiohttp import web

from api import keys, params

COOKIE = "tasklog_session"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def session_value(token: str) -> str:
    return hmac.new(token.encode(), b"tasklog-session-v1", hashlib.sha256).hexdigest()


def is_authorized(request: web.Request, token: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
        return True
    cookie = request.cookies.get(COOKIE, "")
    return hmac.compare_digest(cookie.encode(), session_value(token).encode())


def make_middleware(
    prefix: str, public: frozenset[str]
) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        secret = request.app[keys.SETTINGS].api_token
        if secret is None or request.path in public or request.path.startswith(prefix + "/static/"):
            return await handler(request)
        if is_authorized(request, secret.get_secret_value()):
            return await handler(request)
        if request.path.startswith((prefix + "/api/", prefix + "/sse/", prefix + "/metrics")):
            params.error(web.HTTPUnauthorized, "a token is required: Authorization: Bearer <token>")
        target = request.path_qs if request.method == "GET" else prefix + "/"
        raise web.HTTPFound(f"{prefix}/login?next={quote(target, safe='')}")

    return require_token


def safe_next(prefix: str, target: str | None) -> str:
    """Where to go after login: only a path of ours, never another site."""
    if target and target.startswith(prefix + "/") and not target.startswith("//"):
        return target
    return prefix + "/"
