"""Side tasks that fail are restarted, never left dead: the API's Redis hub, in-process, with a
real Postgres and Redis; a failure nobody expected is injected into its message handling."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from api import keys
from api.hub import Hub
from tests.integration.api_support import (
    PREFIX,
    FakeCollector,
    api_settings,
    running_api,
    seqs,
    sse,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_hub_recovers_from_an_unexpected_error(
    database_url: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    dispatch, link = Hub.dispatch, Hub._link
    ours: list[Hub] = []  # the patch is the class's: another test's API may live on
    broken, restarted, allowed = asyncio.Event(), asyncio.Event(), asyncio.Event()

    def fails_once(self: Hub, channel: bytes, data: bytes) -> None:
        if self in ours and not broken.is_set():
            broken.set()
            raise RuntimeError("injected: a bug in the hub")
        dispatch(self, channel, data)

    async def held_link(self: Hub) -> None:
        if self in ours and broken.is_set():
            # The restarted link waits until the test has seen the hub down.
            restarted.set()
            await allowed.wait()
        await link(self)

    monkeypatch.setattr(Hub, "dispatch", fails_once)
    monkeypatch.setattr(Hub, "_link", held_link)
    caplog.set_level(logging.DEBUG, logger="api.hub")
    settings = api_settings(database_url, redis_url)
    async with (
        FakeCollector.connect(database_url, redis_url) as fake,
        running_api(settings) as client,
    ):
        hub = client.app[keys.HUB]
        ours.append(hub)
        await fake.start("victim")  # its message on the tasks channel trips the bug

        async def status() -> dict[str, Any]:
            response = await client.get(f"{PREFIX}/healthz")
            assert response.status == 200
            body: dict[str, Any] = await response.json()
            return body

        # Down: the health report (no token is set: the full report) says so, with the cause.
        async with asyncio.timeout(15):
            await restarted.wait()
        report = await status()
        assert report["status"] == "degraded", report
        assert report["redis"]["subscribed"] is False
        assert "injected" in (report["redis"]["error"] or ""), report
        allowed.set()

        # Back: the link is subscribed again, healthz says ok, and a stream gets live lines.
        async with asyncio.timeout(15):
            while not (hub.live and (await status())["status"] == "ok"):
                await asyncio.sleep(0.05)
        async with sse(client, f"{PREFIX}/sse/task/victim/") as stream:
            await stream.until(lambda e: e.type == "connected")
            await fake.lines("victim", ["after the bug 1", "after the bug 2"])
            await fake.finish("victim")
            rest = await stream.rest()
        assert seqs(rest) == [1, 2] and rest[-1].type == "end"

        diagnostic = await (await client.get(f"{PREFIX}/api/diagnostic/")).json()
        assert diagnostic["api"]["redis_reconnects"] >= 1

    failures = [r for r in caplog.records if "injected" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in failures]
    assert failures[0].levelno == logging.ERROR and failures[0].exc_info is not None
