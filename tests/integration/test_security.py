"""Security of the API: the token guards every route but health, compared in constant time;
the login cookie's flags; cross-site posts refused; loopback only without a token; task
arguments never served when they were not recorded."""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
import shutil
import socket
import ssl
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from api import auth, views
from api.app import create_app
from tests.helpers import ProcessFactory, free_port, pg_rows, wait_for
from tests.integration.api_support import PREFIX, ApiClient, api_settings, running_api

pytestmark = pytest.mark.asyncio(loop_scope="session")

TOKEN = "s3cret-token-0123456789"
#: What may be reached without the token: health, the login page (and its form), and the
#: static CSS/JS the login page needs. A route added to this set must be added here on purpose.
#: The routes anyone may call, and what each answers without a token: exactly that status
#: (a 401 from /healthz is a failure). POST /login without the token is the form again, 401.
PUBLIC = {
    ("GET", f"{PREFIX}/healthz"): 200,
    ("HEAD", f"{PREFIX}/healthz"): 200,
    ("GET", f"{PREFIX}/login"): 200,
    ("HEAD", f"{PREFIX}/login"): 200,
    ("POST", f"{PREFIX}/login"): 401,
    ("GET", f"{PREFIX}/static/"): 200,
    ("HEAD", f"{PREFIX}/static/"): 200,
}
#: Routes answered with a JSON 401; the others (pages) redirect to the login page.
JSON_PREFIXES = (f"{PREFIX}/api/", f"{PREFIX}/sse/", f"{PREFIX}/metrics")


def routes_of(app: web.Application) -> list[tuple[str, str, str]]:
    """(method, route template, a concrete path) of every route the application serves."""
    found = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        if "prefix" in info:  # static files: one real file stands for all of them
            template = path = str(info["prefix"]).rstrip("/") + "/"
            path += "app.css"
        else:
            template = str(info.get("path") or info.get("formatter"))
            path = re.sub(r"\{[^}]+\}", "some-task", template)
        found.append((route.method, template, path))
    return found


@pytest.fixture
async def guarded(database_url: str, redis_url: str) -> AsyncIterator[ApiClient]:
    settings = api_settings(database_url, redis_url, api_token=TOKEN, api_demo_launch=True)
    async with running_api(settings) as client:
        yield client


async def request(
    client: ApiClient, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """Status, Location and the start of the body; a stream is closed after its headers."""
    response = await client.request(method, path, headers=headers, allow_redirects=False)
    try:
        streaming = response.status == 200 and path.startswith(f"{PREFIX}/sse/")
        body = "" if method == "HEAD" or streaming else await response.text()
        return response.status, response.headers.get("Location", ""), body[:200]
    finally:
        response.close()


# -- the token -----------------------------------------------------------------------------------


async def test_every_route_but_health_refuses_a_missing_or_wrong_token(
    guarded: ApiClient,
) -> None:
    routes = routes_of(guarded.app)
    guarded_routes = [r for r in routes if (r[0], r[1]) not in PUBLIC]
    # Every public entry exists (the set is not stale), and the rest is guarded.
    assert PUBLIC.keys() <= {(m, t) for m, t, _ in routes}
    assert len(guarded_routes) >= 20, guarded_routes
    wrong = [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Cookie": f"{auth.COOKIE}={TOKEN}"},  # the cookie holds an HMAC, not the token
        {"Cookie": f"{auth.COOKIE}={auth.session_value('wrong')}"},
    ]
    for method, template, path in guarded_routes:
        for headers in wrong:
            status, location, body = await request(guarded, method, path, headers)
            who = f"{method} {template} with {headers}"
            if path.startswith(JSON_PREFIXES):
                assert status == 401, who
                if method != "HEAD":
                    assert '"error"' in body, who
            else:
                assert status == 302, who
                assert location.startswith(f"{PREFIX}/login?next="), who
    # The right token opens each of them (the login redirect is never the answer).
    good = [
        {"Authorization": f"Bearer {TOKEN}"},
        {"Cookie": f"{auth.COOKIE}={auth.session_value(TOKEN)}"},
    ]
    for method, template, path in guarded_routes:
        for headers in good:
            status, location, _ = await request(guarded, method, path, headers)
            who = f"{method} {template} with {headers}"
            assert status != 401 and "login?next=" not in location, who
    for (method, path), public_status in sorted(PUBLIC.items()):
        status, location, body = await request(
            guarded, method, path.replace("/static/", "/static/app.css")
        )
        assert (status, location) == (public_status, ""), (method, path, body)


def _compares_secret_with_eq(function: Any) -> list[str]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(
            isinstance(op, ast.Eq | ast.NotEq) for op in node.ops
        ):
            text = ast.unparse(node)
            if re.search(r"token|secret|cookie|given|session", text):
                found.append(text)
    return found


async def test_token_comparisons_are_constant_time() -> None:
    for function in (auth.is_authorized, views.login):
        source = inspect.getsource(function)
        assert "hmac.compare_digest(" in source or "secrets.compare_digest(" in source, function
        assert _compares_secret_with_eq(function) == [], function


# -- the login cookie ----------------------------------------------------------------------------


def _cookie_attributes(header: str) -> dict[str, str]:
    name_value, *attrs = [part.strip() for part in header.split(";")]
    assert name_value.startswith(auth.COOKIE + "=")
    out = {}
    for attr in attrs:
        key, _, value = attr.partition("=")
        out[key.lower()] = value
    return out


async def _login(client: ApiClient, headers: dict[str, str] | None = None) -> dict[str, str]:
    response = await client.post(
        f"{PREFIX}/login",
        data={"token": TOKEN, "next": f"{PREFIX}/"},
        headers=headers,
        allow_redirects=False,
    )
    assert response.status == 302
    return _cookie_attributes(response.headers["Set-Cookie"])


async def test_login_cookie_is_httponly_samesite_and_secure_over_https(
    guarded: ApiClient,
) -> None:
    plain = await _login(guarded)
    assert "httponly" in plain
    assert plain["samesite"].lower() in ("strict", "lax")
    assert plain["path"] == f"{PREFIX}/"
    assert "secure" not in plain  # over plain http a Secure cookie would never come back
    # Behind a TLS-terminating proxy that says so (docs/deploy.md's nginx does).
    proxied = await _login(guarded, {"X-Forwarded-Proto": "https"})
    assert "secure" in proxied and "httponly" in proxied


async def test_login_cookie_is_secure_over_tls(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        capture_output=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"openssl could not make a certificate: {made.stderr[-200:]!r}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    app = create_app(api_settings(database_url, redis_url, api_token=TOKEN))
    connector = aiohttp.TCPConnector(ssl=False)  # a self-signed certificate
    server = TestServer(app)
    await server.start_server(ssl=context)  # TestClient then finds it started
    async with TestClient(server, connector=connector) as client:
        assert client.make_url("/").scheme == "https"
        attributes = await _login(client)
    assert "secure" in attributes and "httponly" in attributes


# -- cross-site posts ----------------------------------------------------------------------------


async def test_launch_form_refuses_cross_site_posts(guarded: ApiClient) -> None:
    own = str(guarded.make_url("")).rstrip("/")
    cookie = {"Cookie": f"{auth.COOKIE}={auth.session_value(TOKEN)}"}
    body = {"task": "demo.demo_quick_task", "kwargs": {}}
    launch = f"{PREFIX}/api/launch/"

    async def post(headers: dict[str, str], **kw: Any) -> int:
        kw = kw or {"json": body}
        response = await guarded.post(launch, headers={**cookie, **headers}, **kw)
        text = await response.text()
        assert "Traceback" not in text
        return response.status

    for foreign in (
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Origin": own.replace("127.0.0.1", "127.0.0.1.evil.example")},
        {"Referer": "https://evil.example/page"},
        {"Origin": "https://evil.example", "Referer": f"{own}{PREFIX}/launch/"},
    ):
        assert await post(foreign) == 403, foreign
    # A cross-site HTML form can only send text/plain, urlencoded or multipart bodies: those
    # are refused even from a client that sent no Origin.
    text_plain = '{"task": "demo.demo_quick_task", "x": "="}'
    assert await post({}, data=text_plain) == 400
    assert await post({}, data={"task": "demo.demo_quick_task"}) == 400
    # The launcher page itself (same origin, JSON, with the cookie) may launch.
    assert await post({"Origin": own, "Referer": f"{own}{PREFIX}/launch/"}) == 202
    # The other forms: login and logout.
    for path in (f"{PREFIX}/login", f"{PREFIX}/logout"):
        response = await guarded.post(
            path,
            data={"token": TOKEN},
            headers={**cookie, "Origin": "https://evil.example"},
            allow_redirects=False,
        )
        assert response.status == 403, path
        assert "Set-Cookie" not in response.headers


async def test_cross_site_posts_refused_without_a_token_too(
    database_url: str, redis_url: str
) -> None:
    async with running_api(api_settings(database_url, redis_url, api_demo_launch=True)) as client:
        response = await client.post(
            f"{PREFIX}/api/launch/",
            json={"task": "demo.demo_quick_task"},
            headers={"Origin": "http://evil.example"},
        )
        assert response.status == 403


# -- binding -------------------------------------------------------------------------------------


def non_loopback_address() -> str | None:
    """An IPv4 address of this machine other than loopback, if it has one."""
    out = subprocess.run(
        ["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=False
    ).stdout
    for address in re.findall(r"\sinet (\d+\.\d+\.\d+\.\d+)/", out):
        if not address.startswith("127."):
            return str(address)
    return None


def listeners(port: int) -> list[str]:
    out = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=False
    ).stdout
    return [line.split()[3] for line in out.splitlines() if line.strip()]


def connects(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        return False
    return True


@pytest.mark.parametrize("token", [None, TOKEN])
async def test_without_a_token_the_api_listens_on_loopback_only(
    procs: ProcessFactory, database_url: str, token: str | None
) -> None:
    port = free_port()
    env = {
        "TASKLOG_DATABASE_URL": database_url,
        "TASKLOG_API_HOST": "0.0.0.0",
        "TASKLOG_API_PORT": str(port),
    }
    if token:
        env["TASKLOG_API_TOKEN"] = token
    api = procs.start(
        "api", [sys.executable, "-m", "tasklog", "api"], env=env, ready="listening on http"
    )
    elsewhere = non_loopback_address()
    if token is None:
        assert "listening on 127.0.0.1 instead of 0.0.0.0" in api.log_text()
        assert re.search(rf"listening on http://127\.0\.0\.1:{port}/", api.log_text())
        if shutil.which("ss"):
            assert listeners(port) == [f"127.0.0.1:{port}"]
        if elsewhere is not None:
            assert not connects(elsewhere, port), f"reachable on {elsewhere}"
    else:
        assert "TASKLOG_API_TOKEN is not set" not in api.log_text()
        if shutil.which("ss"):
            assert listeners(port) == [f"0.0.0.0:{port}"]
        if elsewhere is not None:
            assert connects(elsewhere, port)
    assert connects("127.0.0.1", port)


# -- task arguments ------------------------------------------------------------------------------


async def test_unrecorded_task_args_are_never_served(
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
) -> None:
    """TASKLOG_RECORD_ARGS off (the default): an argument's value appears in no response."""
    marker = "0.0031415926"  # a kwarg the task never prints
    procs.collector(
        database_url=database_url, redis_url=redis_url, spool_dir=spool_dir, ready="following"
    )
    procs.worker(redis_url=redis_url, spool_dir=spool_dir, pool="threads", concurrency=1)
    task = celery_client.send_task("demo.print_lines", kwargs={"count": 3, "delay": float(marker)})
    query = "SELECT state FROM tasks WHERE task_id = %s"
    await asyncio.to_thread(
        wait_for, lambda: pg_rows(database_url, query, (task.id,)), 60, 0.1, "the task stored"
    )
    await asyncio.to_thread(
        wait_for,
        lambda: pg_rows(database_url, query, (task.id,))[0][0] == "SUCCESS",
        60,
        0.1,
        "the task finished",
    )
    assert pg_rows(database_url, "SELECT args FROM tasks WHERE task_id = %s", (task.id,)) == [
        (None,)
    ]
    async with running_api(api_settings(database_url, redis_url)) as client:
        bodies = []
        for path in (
            "/api/tasks/",
            f"/api/tasks/{task.id}/",
            f"/api/tasks/{task.id}/raw",
            "/",
            f"/task/{task.id}/",
            "/api/diagnostic/",
            "/diagnostic/",
        ):
            response = await client.get(PREFIX + path)
            assert response.status == 200, path
            bodies.append(await response.text())
        async with asyncio.timeout(20):
            response = await client.get(f"{PREFIX}/sse/task/{task.id}/")
            bodies.append(await response.text())  # a finished task's stream ends by itself
        assert "line 3" in bodies[1] and '"end"' in bodies[-1]
        for body in bodies:
            assert "31415926" not in body
        assert "args" not in (await (await client.get(f"{PREFIX}/api/tasks/{task.id}/")).json())
