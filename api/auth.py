"""`TASKLOG_API_TOKEN`: every route but health and the login page requires it.

A client sends ``Authorization: Bearer <token>``; a browser logs in once through the login
page, which sets an HttpOnly cookie (EventSource cannot send headers). The cookie holds the
time it was issued and an HMAC of it keyed by the token and `TASKLOG_API_SESSION_EPOCH`, never
the token: rotating either logs every browser out, and a cookie expires after `SESSION_DAYS`
whatever the browser keeps. With or without a token, a POST from another site's page is refused
(`same_origin`); without a token, only loopback Host names are answered (`loopback_host`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import time
from collections.abc import Awaitable, Callable
from urllib.parse import quote, urlsplit

from aiohttp import web

from api import keys, params
from api.settings import ApiSettings

COOKIE = "tasklog_session"
SESSION_DAYS = 30
SESSION_SECONDS = SESSION_DAYS * 24 * 3600
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def session_value(token: str, epoch: int = 0, issued: int | None = None) -> str:
    """The login cookie: ``<issued>.<HMAC(token, epoch and issued)>``."""
    issued = int(time.time()) if issued is None else issued
    mac = hmac.new(token.encode(), f"tasklog-session-v2:{epoch}:{issued}".encode(), hashlib.sha256)
    return f"{issued}.{mac.hexdigest()}"


def valid_session(cookie: str, token: str, epoch: int) -> bool:
    issued_text, _, _ = cookie.partition(".")
    if not issued_text.isdigit() or len(issued_text) > 12:
        return False
    issued = int(issued_text)
    expected = session_value(token, epoch, issued)
    # Compare first, in constant time; then the age (not a secret).
    return hmac.compare_digest(cookie.encode(), expected.encode()) and (
        -60 <= time.time() - issued <= SESSION_SECONDS
    )


def is_authorized(request: web.Request, settings: ApiSettings) -> bool:
    """Whether the request carries the token (or a valid login cookie); True without a token."""
    token = settings.token()
    if token is None:
        return True
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if (
        scheme.lower() == "bearer"
        and given.strip()
        and hmac.compare_digest(given.strip().encode(), token.encode())
    ):
        return True
    cookie = request.cookies.get(COOKIE, "")
    return bool(cookie) and valid_session(cookie, token, settings.api_session_epoch)


def make_middleware(
    prefix: str, public: frozenset[str]
) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (
            request.path in public
            or request.path.startswith(prefix + "/static/")
            or is_authorized(request, request.app[keys.SETTINGS])
        ):
            return await handler(request)
        if request.path.startswith((prefix + "/api/", prefix + "/sse/", prefix + "/metrics")):
            params.error(web.HTTPUnauthorized, "a token is required: Authorization: Bearer <token>")
        target = request.path_qs if request.method == "GET" else prefix + "/"
        raise web.HTTPFound(f"{prefix}/login?next={quote(target, safe='')}")

    return require_token


# -- DNS rebinding ---------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """``localhost`` (and its subdomains, which browsers resolve to loopback themselves),
    127.0.0.0/8 or ::1."""
    host = host.rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str:
    """The name of a ``Host`` header without its port: ``[::1]:8000`` -> ``[::1]``."""
    value = host_header.strip()
    if value.startswith("["):
        return value[: value.find("]") + 1] if "]" in value else value
    name, colon, port = value.rpartition(":")
    return name if colon and port.isdigit() else value


@web.middleware
async def loopback_host(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Without a token the API answers only to loopback names.

    Through DNS rebinding a page of any site can point its own name at 127.0.0.1 and read
    what answers there: the browser then sends that site's name as ``Host``. A real user of a
    token-less API reaches it as localhost or a loopback address.
    """
    settings = request.app[keys.SETTINGS]
    given = request.headers.get("Host")
    try:
        request.url  # noqa: B018  (the URL is built from Host: links and redirects need it)
    except ValueError:
        shown = (given or "")[:100]
        params.bad(f"Host {shown!r} is not a host name (and port) this API can answer to")
    # No browser omits Host: a request without one is no rebinding page's.
    if settings.api_token is None and not settings.api_insecure_bind and given is not None:
        name = host_name(given)
        if not is_loopback(name):
            params.error(
                web.HTTPMisdirectedRequest,
                f"Host {name[:100]!r} is not served: without TASKLOG_API_TOKEN this API answers"
                " only to localhost, 127.0.0.0/8 and [::1]",
            )
    return await handler(request)


# -- cross-site requests ---------------------------------------------------------------------------

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
