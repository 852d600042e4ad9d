"""`TASKLOG_API_TOKEN`: every route but health and the login page requires it.

A client sends ``Authorization: Bearer <token>``; a browser logs in once through the login
page, which sets an HttpOnly cookie (EventSource cannot send headers). The cookie holds an
HMAC of the token, not the token itself. With or without a token, a POST from another site's
page is refused (`same_origin`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from urllib.parse import quote, urlsplit

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


#: Methods that change something: a browser must not send them on behalf of another site.
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_DEFAULT_PORTS = (":80", ":443")


def _netloc(value: str) -> str:
    host = value.strip().lower()
    for port in _DEFAULT_PORTS:
        if host.endswith(port):
            return host.removesuffix(port)
    return host


def is_cross_site(request: web.Request) -> bool:
    """Whether a browser sent this request from a page of another site.

    Browsers name the page that sends a POST in ``Origin`` (and ``Referer``); a request with
    neither was not sent by a browser for another site's page. Only the host is compared:
    behind a TLS-terminating proxy the scheme seen here is not the browser's.
    """
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if source is None:
        return False
    given = urlsplit(source)
    if given.scheme not in ("http", "https") or not given.netloc:
        return True  # "null" (sandboxed frames, file: pages) or garbage
    return _netloc(given.netloc) != _netloc(request.host)


@web.middleware
async def same_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Cross-site request forgery: refuse an unsafe method sent from another site's page."""
    if request.method in UNSAFE_METHODS and is_cross_site(request):
        params.error(
            web.HTTPForbidden,
            f"cross-site request refused: Origin/Referer is not this site ({request.host})",
        )
    return await handler(request)


def safe_next(prefix: str, target: str | None) -> str:
    """Where to go after login: only a path of ours, never another site."""
    if target and target.startswith(prefix + "/") and not target.startswith("//"):
        return target
    return prefix + "/"
