"""Who may use the API and how much of it: weak tokens refused at start, DNS rebinding
refused without a token, the demo launcher off by default, failed logins throttled and
logged, cookies revoked, healthz terse without the token, hostile cursors answered 400, SSE
streams and detail pages bounded."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from api import auth
from api.settings import MIN_TOKEN_LENGTH
from tests.helpers import ProcessFactory, free_port
from tests.integration.api_support import (
    PREFIX,
    ApiClient,
    FakeCollector,
    api_settings,
    running_api,
    sse,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

TOKEN = "doors-token-0123456789abcdef"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@asynccontextmanager
async def http(**connector: Any) -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(**connector)
    ) as session:
        yield session


def start_api(procs: ProcessFactory, database_url: str, **env: str) -> str:
    """`python -m tasklog api` on a free port; returns its base URL on 127.0.0.1."""
    port = free_port()
    procs.start(
        "api",
        [sys.executable, "-m", "tasklog", "api"],
        env={"TASKLOG_DATABASE_URL": database_url, "TASKLOG_API_PORT": str(port), **env},
        ready="listening on http",
    )
    return f"http://127.0.0.1:{port}"


# -- weak tokens -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token", ["", "   ", "short-token", "x" * (MIN_TOKEN_LENGTH - 1), f" {'y' * 20} "]
)
async def test_a_weak_token_stops_the_api_at_start(database_url: str, token: str) -> None:
    port = free_port()
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "tasklog", "api"],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "PATH": "/usr/bin:/bin",
            "TASKLOG_DATABASE_URL": database_url,
            "TASKLOG_API_TOKEN": token,
            "TASKLOG_API_HOST": "0.0.0.0",
            "TASKLOG_API_PORT": str(port),
        },
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tasklog: TASKLOG_API_TOKEN "), result.stderr
    assert "Traceback" not in result.stderr and "listening" not in result.stderr
    if token.strip():
        assert token.strip() not in result.stderr  # the refused token is not printed
    assert f"at least {MIN_TOKEN_LENGTH}" in lines[0]


async def test_an_empty_login_never_works(database_url: str, redis_url: str) -> None:
    async with running_api(api_settings(database_url, redis_url, api_token=TOKEN)) as client:
        for form in ({"token": ""}, {}, {"token": " "}):
            response = await client.post(f"{PREFIX}/login", data=form, allow_redirects=False)
            assert response.status == 401, form
            assert auth.COOKIE not in response.cookies
        for header in ("Bearer ", "Bearer", "bearer  ", ""):
            response = await client.get(f"{PREFIX}/api/tasks/", headers={"Authorization": header})
            assert response.status == 401, header
        response = await client.get(f"{PREFIX}/api/tasks/", headers={"Cookie": f"{auth.COOKIE}="})
        assert response.status == 401


# -- DNS rebinding -----------------------------------------------------------------------------


async def test_without_a_token_only_loopback_host_names_are_answered(
    procs: ProcessFactory, database_url: str
) -> None:
    base = start_api(procs, database_url)
    port = base.rsplit(":", 1)[1]
    async with http() as session:
        for host in ("evil.example", f"evil.example:{port}", "localhost.evil.example", "10.0.0.1"):
            for path in ("/", "/api/tasks/", "/healthz", "/sse/tasks/", "/static/app.css"):
                response = await session.get(f"{base}{PREFIX}{path}", headers={"Host": host})
                body = await response.text()
                assert response.status == 421, (host, path, body)
                assert len(body.splitlines()) == 1
                error = json.loads(body)
                assert error["status"] == 421 and "TASKLOG_API_TOKEN" in error["error"], body
        for host in (
            f"127.0.0.1:{port}",
            "127.0.0.1",
            f"127.5.6.7:{port}",
            f"localhost:{port}",
            "LOCALHOST",
            f"app.localhost:{port}",
            f"[::1]:{port}",
        ):
            response = await session.get(f"{base}{PREFIX}/api/tasks/", headers={"Host": host})
            assert response.status == 200, host


async def test_with_a_token_any_host_name_is_answered(
    procs: ProcessFactory, database_url: str
) -> None:
    base = start_api(procs, database_url, TASKLOG_API_TOKEN=TOKEN)
    async with http() as session:
        headers = {"Host": "tasklog.example.com", **BEARER}
        response = await session.get(f"{base}{PREFIX}/api/tasks/", headers=headers)
        assert response.status == 200
        response = await session.get(
            f"{base}{PREFIX}/api/tasks/", headers={"Host": "tasklog.example.com"}
        )
        assert response.status == 401


# -- the demo launcher ---------------------------------------------------------------------------


async def test_the_demo_launcher_is_off_unless_asked(database_url: str, redis_url: str) -> None:
    body = {"task": "demo.demo_quick_task", "kwargs": {}}
    async with running_api(api_settings(database_url, redis_url)) as client:
        response = await client.post(f"{PREFIX}/api/launch/", json=body)
        assert response.status == 404
        assert "TASKLOG_API_DEMO_LAUNCH" in (await response.json())["error"]
        page = await client.get(f"{PREFIX}/launch/")
        assert page.status == 404 and "disabled" in await page.text()
        listing = await (await client.get(f"{PREFIX}/")).text()
        assert f'href="{PREFIX}/launch/"' not in listing  # no nav link, no "launch" hint
    # `tasklog demo` turns it on: tests/integration/test_demo.py
    settings = api_settings(database_url, redis_url, api_demo_launch=True)
    async with running_api(settings) as client:
        listing = await (await client.get(f"{PREFIX}/")).text()
        assert f'href="{PREFIX}/launch/"' in listing
        assert (await client.get(f"{PREFIX}/launch/")).status == 200
        response = await client.post(f"{PREFIX}/api/launch/", data="not json")
        assert response.status == 400
        response = await client.post(f"{PREFIX}/api/launch/", json={"task": "os.system"})
        assert response.status == 400
        response = await client.post(f"{PREFIX}/api/launch/", json=body)
        assert response.status == 202 and (await response.json())["task_id"]


# -- failed logins -------------------------------------------------------------------------------


async def _login(session: aiohttp.ClientSession, base: str, token: str) -> aiohttp.ClientResponse:
    response = await session.post(
        f"{base}{PREFIX}/login", data={"token": token, "next": f"{PREFIX}/"}, allow_redirects=False
    )
    await response.read()
    return response


async def test_failed_logins_are_throttled_per_address_and_logged(
    database_url: str, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tasklog.api")
    async with running_api(api_settings(database_url, redis_url, api_token=TOKEN)) as client:
        base = str(client.make_url("")).rstrip("/")
        async with (
            http(local_addr=("127.0.0.1", 0)) as one,
            http(local_addr=("127.0.0.2", 0)) as two,
        ):
            statuses = [(await _login(one, base, f"guess-{i}")).status for i in range(5)]
            assert statuses == [401] * 5
            throttled = await _login(one, base, "guess-5")
            assert throttled.status == 429
            wait = int(throttled.headers["Retry-After"])
            assert 1 <= wait <= 60
            # While throttled even the right token is refused: guessing learns nothing.
            right = await _login(one, base, TOKEN)
            assert right.status == 429 and auth.COOKIE not in right.cookies
            # Another address is not held back by this one.
            other = await _login(two, base, TOKEN)
            assert other.status == 302 and auth.COOKIE in other.cookies
    warnings = [r.getMessage() for r in caplog.records if "failed login" in r.getMessage()]
    assert len(warnings) == 5, warnings
    assert all("127.0.0.1" in w for w in warnings)
    assert not any("guess" in r.getMessage() for r in caplog.records)


# -- revoking cookies ----------------------------------------------------------------------------


async def test_cookies_expire_and_are_revoked_by_epoch_or_token(
    database_url: str, redis_url: str
) -> None:
    async def status(client: ApiClient, cookie: str) -> int:
        response = await client.get(
            f"{PREFIX}/api/tasks/", headers={"Cookie": f"{auth.COOKIE}={cookie}"}
        )
        return response.status

    async with running_api(api_settings(database_url, redis_url, api_token=TOKEN)) as client:
        login = await client.post(
            f"{PREFIX}/login", data={"token": TOKEN, "next": f"{PREFIX}/"}, allow_redirects=False
        )
        cookie = login.cookies[auth.COOKIE].value
        assert TOKEN not in cookie
        client.session.cookie_jar.clear()  # each request below names its cookie
        assert await status(client, cookie) == 200
        # The server decides when a cookie is too old, not the browser.
        old = auth.session_value(TOKEN, 0, int(time.time()) - auth.SESSION_SECONDS - 10)
        assert await status(client, old) == 401
        forged = cookie.split(".")[0] + "." + "0" * 64
        assert await status(client, forged) == 401
        # Logging out tells the browser to drop it.
        out = await client.post(
            f"{PREFIX}/logout",
            headers={"Cookie": f"{auth.COOKIE}={cookie}"},
            allow_redirects=False,
        )
        assert out.status == 302
        dropped = out.headers["Set-Cookie"]
        assert dropped.startswith(f'{auth.COOKIE}="";') and "Max-Age=0" in dropped, dropped
    # TASKLOG_API_SESSION_EPOCH changed: every cookie issued before is refused.
    settings = api_settings(database_url, redis_url, api_token=TOKEN, api_session_epoch=1)
    async with running_api(settings) as client:
        assert await status(client, cookie) == 401
        assert await status(client, auth.session_value(TOKEN, 1)) == 200
    # TASKLOG_API_TOKEN rotated: the same.
    settings = api_settings(database_url, redis_url, api_token=TOKEN + "-rotated")
    async with running_api(settings) as client:
        assert await status(client, cookie) == 401


# -- healthz -------------------------------------------------------------------------------------


async def test_healthz_says_only_up_or_down_without_the_token(
    database_url: str, redis_url: str
) -> None:
    async with running_api(api_settings(database_url, redis_url, api_token=TOKEN)) as client:
        response = await client.get(f"{PREFIX}/healthz")
        assert response.status == 200
        assert await response.json() == {"status": "ok"}
        wrong = await client.get(f"{PREFIX}/healthz", headers={"Authorization": "Bearer nope"})
        assert wrong.status == 200 and await wrong.json() == {"status": "ok"}
        response = await client.get(f"{PREFIX}/healthz", headers=BEARER)
        full = await response.json()
        assert response.status == 200 and full["status"] == "ok" and full["postgres"]["version"]
    async with running_api(api_settings(database_url, redis_url)) as client:
        # Without a token (loopback only) everyone may read the diagnostic page anyway.
        response = await client.get(f"{PREFIX}/healthz")
        full = await response.json()
        assert response.status == 200 and full["postgres"]["schema_version"]


# -- hostile cursors -----------------------------------------------------------------------------


def _cursor(created: str, task_id: str) -> str:
    raw = json.dumps([created, task_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/api/tasks/?cursor=" + _cursor("2024-05-01T12:00:00+00:00", "a\x00b"), {}),
        ("/api/tasks/?cursor=" + _cursor("2024-05-01T12:00:00+00:00", "a\ud800b"), {}),
        ("/api/tasks/?cursor=" + _cursor("2024-05-01T12:00:00\x00+00:00", "a"), {}),
        ("/api/tasks/?cursor=%00", {}),
        ("/api/tasks/?cursor=" + base64.urlsafe_b64encode(b"\xff\xfe\x00").decode(), {}),
        ("/api/tasks/?since=2024-05-01%00", {}),
        ("/api/tasks/?name=a%00b", {}),
        ("/api/tasks/?state=SUCCESS%00", {}),
        ("/api/tasks/?limit=%00", {}),
        ("/api/tasks/job/?after_seq=1%00", {}),
        ("/api/tasks/a%00b/", {}),
        ("/sse/task/job/?after_seq=%00", {}),
        ("/sse/task/a%00b/", {}),
    ],
)
async def test_a_hostile_cursor_or_parameter_is_a_400(
    database_url: str, redis_url: str, path: str, headers: dict[str, str]
) -> None:
    async with FakeCollector.connect(database_url, redis_url) as fake:
        await fake.start("job")
    async with running_api(api_settings(database_url, redis_url)) as client:
        response = await client.get(PREFIX + path, headers=headers)
        body = await response.text()
        assert response.status == 400, body
        assert json.loads(body)["status"] == 400 and "Traceback" not in body


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/tasks/?name=%ED%A0%80", 200),  # a lone surrogate, UTF-8 encoded
        ("/api/tasks/?host=%C0%80", 200),  # an overlong NUL
        ("/api/tasks/?name=%FF%FE", 200),
        ("/api/tasks/%ED%A0%80/", 404),
        ("/api/tasks/%C0%80/raw", 404),
        ("/sse/task/%ED%A0%80/", 200),
        ("/task/%C0%80/", 200),
    ],
)
async def test_undecodable_parameters_are_never_a_500(
    database_url: str, redis_url: str, path: str, status: int
) -> None:
    """aiohttp decodes what is not UTF-8 to U+FFFD: a name nothing has, never a crash. A
    list finds nothing, a task's JSON is a 404, its stream and page wait for it to start."""
    async with running_api(api_settings(database_url, redis_url)) as client:
        response = await client.get(PREFIX + path)
        if path.startswith("/sse/"):  # a task not started yet: its stream waits for it
            assert response.status == status
            response.close()
            return
        body = await response.text()
        assert response.status == status, body
        assert "internal error" not in body
        if path.startswith("/api/tasks/?"):
            assert json.loads(body)["results"] == []
        elif path.startswith("/api/"):
            assert json.loads(body)["status"] == 404


async def test_a_last_event_id_holding_nul_is_a_400(
    database_url: str, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp's client refuses to send a NUL in a header: written on a raw socket. The API
    logs each as one warning line, no traceback (aiohttp's own ERROR, quieted)."""
    caplog.set_level(logging.INFO, logger="aiohttp.server")
    async with running_api(api_settings(database_url, redis_url)) as client:
        port = client.make_url("").port
        for value in (b"1\x00", b"\x00", b"12\x00\x00", b"\xff\xfe"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"GET " + PREFIX.encode() + b"/sse/task/job/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Last-Event-ID: " + value + b"\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
            async with asyncio.timeout(10):
                answer = await reader.read()
            writer.close()
            await writer.wait_closed()
            status_line = answer.split(b"\r\n", 1)[0]
            assert status_line.split(b" ")[1] == b"400", (value, answer[:300])
            assert b"Traceback" not in answer
    # The three NULs are refused by aiohttp's parser; \xff\xfe parses, and the API refuses it.
    logged = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert len(logged) == 3, [r.getMessage() for r in logged]
    for record in logged:
        assert record.levelname == "WARNING" and record.exc_info is None
        assert record.getMessage().startswith("unparsable request from 127.0.0.1: ")


# -- bounds --------------------------------------------------------------------------------------


async def refused_so_far(client: Any) -> float:
    text = await (await client.get(f"{PREFIX}/metrics")).text()
    found = re.search(r"^tasklog_api_sse_refused_total (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_sse_streams_beyond_the_bound_get_a_503_with_retry_after(
    database_url: str, redis_url: str
) -> None:
    async with FakeCollector.connect(database_url, redis_url) as fake:
        await fake.start("job")
        settings = api_settings(database_url, redis_url, api_max_streams=3)
        async with running_api(settings) as client:
            async with (
                sse(client, f"{PREFIX}/sse/task/job/") as one,
                sse(client, f"{PREFIX}/sse/tasks/") as two,
                sse(client, f"{PREFIX}/sse/test/?count=1000") as three,
            ):
                for stream in (one, two, three):
                    event = await stream.next()
                    assert event is not None and event.type == "connected"
                # The API runs in this process: its counter holds what earlier tests refused.
                before = await refused_so_far(client)
                for path in ("/sse/task/job/", "/sse/tasks/", "/sse/test/"):
                    refused = await client.get(PREFIX + path)
                    assert refused.status == 503, path
                    assert refused.headers["Retry-After"] == "5"
                    assert "TASKLOG_API_MAX_STREAMS" in (await refused.json())["error"]
                # JSON routes are not streams: still answered.
                assert (await client.get(f"{PREFIX}/api/tasks/")).status == 200
                assert await refused_so_far(client) == before + 3
            # The three closed: their slots are free again (the server notices each loss).
            async with asyncio.timeout(20):
                while True:
                    response = await client.get(f"{PREFIX}/sse/test/?count=1")
                    if response.status == 200:
                        await response.read()
                        break
                    response.close()
                    await asyncio.sleep(0.1)
            async with (
                sse(client, f"{PREFIX}/sse/task/job/") as one,
                sse(client, f"{PREFIX}/sse/tasks/") as two,
            ):
                assert (await one.next()) is not None and (await two.next()) is not None


async def test_a_workflow_stream_takes_a_slot_like_every_stream(
    database_url: str, redis_url: str
) -> None:
    """Beyond TASKLOG_API_MAX_STREAMS a workflow stream gets the 503 any stream gets, and an
    open workflow stream holds a slot a task stream is then refused for."""
    async with FakeCollector.connect(database_url, redis_url) as fake:
        await fake.start("root")
        settings = api_settings(database_url, redis_url, api_max_streams=1)
        async with running_api(settings) as client:
            async with sse(client, f"{PREFIX}/sse/workflow/root/") as flow:
                event = await flow.next()
                assert event is not None and event.type == "connected"
                before = await refused_so_far(client)
                for path in ("/sse/workflow/root/", "/sse/task/root/"):
                    refused = await client.get(PREFIX + path)
                    assert refused.status == 503, path
                    assert refused.headers["Retry-After"] == "5"
                    assert "TASKLOG_API_MAX_STREAMS" in (await refused.json())["error"]
                assert await refused_so_far(client) == before + 2
            # Closed, the workflow stream gives its slot back.
            async with asyncio.timeout(20):
                while True:
                    response = await client.get(f"{PREFIX}/sse/test/?count=1")
                    if response.status == 200:
                        await response.read()
                        break
                    response.close()
                    await asyncio.sleep(0.1)


async def test_the_largest_detail_page_is_bounded(database_url: str, redis_url: str) -> None:
    async with FakeCollector.connect(database_url, redis_url) as fake:
        await fake.start("job")
        await fake.lines("job", [f"line {i}" for i in range(5003)])
    async with running_api(api_settings(database_url, redis_url)) as client:
        page = await (await client.get(f"{PREFIX}/api/tasks/job/?limit=5000")).json()
        assert len(page["logs"]) == 5000 and page["next"]
        default = await (await client.get(f"{PREFIX}/api/tasks/job/")).json()
        assert len(default["logs"]) == 1000 and default["next"]
        for limit in ("5001", "0", "99999999999999999999", "-1"):
            response = await client.get(f"{PREFIX}/api/tasks/job/?limit={limit}")
            assert response.status == 400, limit
            assert (
                "limit: expected an integer between 1 and 5000" in (await response.json())["error"]
            )


# -- passwords in URLs ---------------------------------------------------------------------------


async def test_the_diagnostic_page_masks_a_query_string_password(
    database_url: str, redis_url: str
) -> None:
    """libpq and redis-py both take ``?password=``; the servers here trust local connections,
    so the API runs with these URLs as given."""
    settings = api_settings(
        f"{database_url}?password=hunter2pg", f"{redis_url}?password=hunter2redis"
    )
    async with running_api(settings) as client:
        report = await (await client.get(f"{PREFIX}/api/diagnostic/")).json()
        shown = report["settings"]
        assert shown["TASKLOG_DATABASE_URL"] == f"{database_url}?password=********"
        assert shown["TASKLOG_REDIS_URL"] == f"{redis_url}?password=********"
        page = await (await client.get(f"{PREFIX}/diagnostic/")).text()
        assert "password=********" in page
        for body in (json.dumps(report), page):
            assert "hunter2" not in body
