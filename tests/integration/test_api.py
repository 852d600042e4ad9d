"""The API against real Postgres and Redis, fed by a fake collector that keeps its contract."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from api import keys
from tests.integration.api_support import (
    PREFIX,
    FakeCollector,
    api_settings,
    running_api,
    seqs,
    sse,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
async def fake(database_url: str, redis_url: str) -> Any:
    async with FakeCollector.connect(database_url, redis_url) as collector:
        yield collector


@pytest.fixture
async def client(database_url: str, redis_url: str) -> Any:
    async with running_api(api_settings(database_url, redis_url)) as client:
        yield client


# -- JSON routes ---------------------------------------------------------------------------------


async def test_list_filters_and_keyset_paging(client: Any, fake: FakeCollector) -> None:
    base = datetime.now(UTC) - timedelta(hours=1)
    for i in range(7):
        await fake.start(
            f"t{i}",
            name="demo.a" if i % 2 else "demo.b",
            host="h1" if i < 4 else "h2",
            created_at=base + timedelta(minutes=i),
        )
    await fake.finish("t6", "FAILURE")

    body = await (await client.get(f"{PREFIX}/api/tasks/")).json()
    assert [t["task_id"] for t in body["results"]] == [f"t{i}" for i in range(6, -1, -1)]
    assert body["next"] is None
    first = body["results"][0]
    for key in ("task_id", "task_name", "status", "started_at", "completed_at", "progress"):
        assert key in first
    assert first["status"] == "FAILURE" and first["finished"] is True

    seen: list[str] = []
    url: str | None = str(client.make_url(f"{PREFIX}/api/tasks/?limit=3"))
    while url:
        page = await (await client.session.get(url)).json()  # `next` is absolute
        seen += [t["task_id"] for t in page["results"]]
        url = page["next"]
    assert seen == [f"t{i}" for i in range(6, -1, -1)]

    async def ids(query: str) -> list[str]:
        response = await client.get(f"{PREFIX}/api/tasks/?{query}")
        assert response.status == 200, await response.text()
        return [t["task_id"] for t in (await response.json())["results"]]

    assert await ids("state=FAILURE") == ["t6"]
    assert await ids("state=started,failure&host=h2") == ["t6", "t5", "t4"]
    assert await ids("name=demo.a") == ["t5", "t3", "t1"]
    since = (base + timedelta(minutes=5)).isoformat()
    assert await ids(f"since={since.replace('+', '%2B')}") == ["t6", "t5"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/tasks/?limit=0",
        "/api/tasks/?limit=501",
        "/api/tasks/?limit=abc",
        "/api/tasks/?state=" + "X" * 33,  # longer than any stored state
        "/api/tasks/?state=a%01b",  # not printable
        "/api/tasks/?since=yesterday",
        "/api/tasks/?cursor=garbage",
        "/api/tasks/?name=" + "x" * 300,
        "/api/tasks/t0/?after_seq=-1",
        "/api/tasks/t0/?limit=100000",
        "/api/tasks/%01bad/",
        "/sse/task/t0/?after_seq=x",
    ],
)
async def test_bad_input_is_a_json_400(client: Any, fake: FakeCollector, path: str) -> None:
    await fake.start("t0")
    response = await client.get(PREFIX + path)
    assert response.status == 400
    body = await response.json()
    assert body["error"] and "Traceback" not in body["error"]


async def test_unknown_task_route_and_method_are_json_4xx(client: Any) -> None:
    for path, status in [
        ("/api/tasks/nope/", 404),
        ("/api/nope", 404),
        ("/api/tasks/nope/raw", 404),
    ]:
        response = await client.get(PREFIX + path)
        assert response.status == status
        assert (await response.json())["status"] == status
    response = await client.delete(f"{PREFIX}/api/tasks/")
    assert response.status == 405 and (await response.json())["error"]
    # The demo launcher is off outside `tasklog demo` (test_api_access_and_bounds.py).
    response = await client.post(f"{PREFIX}/api/launch/", json={"task": "os.system"})
    assert response.status == 404 and (await response.json())["status"] == 404
    response = await client.get(PREFIX + "/sse/task/x/", headers={"Last-Event-ID": "abc"})
    assert response.status == 400


async def test_detail_pages_lines_by_after_seq(client: Any, fake: FakeCollector) -> None:
    await fake.start("job")
    await fake.lines("job", [f"out {i}" for i in range(1, 6)])
    await fake.lines("job", ["oops", "<script>window.pwned=1</script>"], stream="stderr")

    body = await (await client.get(f"{PREFIX}/api/tasks/job/?limit=4")).json()
    assert body["log_count"] == 7 and body["status"] == "STARTED"
    assert [line["id"] for line in body["logs"]] == [1, 2, 3, 4]
    assert set(body["logs"][0]) >= {"id", "timestamp", "stream", "message"}
    rest = await (await client.session.get(body["next"])).json()
    assert [(x["id"], x["stream"]) for x in rest["logs"]] == [
        (5, "stdout"),
        (6, "stderr"),
        (7, "stderr"),
    ]
    assert rest["next"] is None

    raw = await client.get(f"{PREFIX}/api/tasks/job/raw")
    assert raw.status == 200 and "attachment" in raw.headers["Content-Disposition"]
    text = await raw.text()
    assert text.count("\n") == 7 and "<script>window.pwned=1</script>" in text


async def test_health_metrics_openapi(client: Any) -> None:
    response = await client.get(f"{PREFIX}/healthz")
    assert response.status == 200
    health = await response.json()
    assert health["status"] == "ok" and health["postgres"]["ok"] and health["redis"]["subscribed"]
    metrics = await (await client.get(f"{PREFIX}/metrics")).text()
    assert "tasklog_api_sse_clients" in metrics and "tasklog_api_request_seconds" in metrics
    doc = await (await client.get(f"{PREFIX}/api/openapi.json")).json()
    assert doc["openapi"].startswith("3.") and f"{PREFIX}/api/tasks/" in doc["paths"]
    diag = await (await client.get(f"{PREFIX}/api/diagnostic/")).json()
    assert "collectors" in diag and diag["settings"]["TASKLOG_DATABASE_URL"]


# -- SSE -----------------------------------------------------------------------------------------


async def test_stream_replays_then_follows_then_ends(client: Any, fake: FakeCollector) -> None:
    await fake.start("run")
    await fake.lines("run", [f"early {i}" for i in range(1, 31)])
    async with sse(client, f"{PREFIX}/sse/task/run/") as stream:
        first = await stream.next()
        assert first is not None and first.type == "connected"
        replayed = await stream.until(lambda e: e.type == "new_log" and e.data["id"] == 30)
        assert seqs(replayed) == list(range(1, 31))
        assert all(e.id == str(e.data["id"]) for e in replayed if e.type == "new_log")
        await fake.lines("run", ["live 31", "live 32"], progress=50)
        await fake.finish("run", messages=["bye"])
        rest = await stream.rest()
    assert seqs(rest) == [31, 32, 33]
    assert rest[-1].type == "end"
    statuses = [e.data for e in rest if e.type == "status"]
    assert statuses[-1]["status"] == "SUCCESS"
    assert any(s["progress"] == 50 for s in statuses)


async def test_resume_with_last_event_id(client: Any, fake: FakeCollector) -> None:
    await fake.start("res")
    await fake.lines("res", [f"a {i}" for i in range(1, 21)])
    async with sse(client, f"{PREFIX}/sse/task/res/") as stream:
        got = await stream.until(lambda e: e.type == "new_log" and e.data["id"] == 12)
    first = seqs(got)[:12]
    await fake.lines("res", [f"b {i}" for i in range(21, 26)])
    async with sse(client, f"{PREFIX}/sse/task/res/", headers={"Last-Event-ID": "12"}) as stream:
        await fake.finish("res", messages=["end"])
        second = seqs(await stream.rest())
    assert first + second == list(range(1, 27))


async def test_concurrent_clients_get_every_line_once_while_lines_arrive(
    client: Any, fake: FakeCollector
) -> None:
    """Clients connect at random moments during a stream of batches: no gap, no duplicate."""
    await fake.start("busy")
    total_batches, per_batch = 40, 5
    joined = asyncio.Event()
    results: list[list[int]] = []

    async def reader(delay_batches: int) -> None:
        while fake.tasks["busy"].last_seq < delay_batches * per_batch:
            await asyncio.sleep(0.005)
        async with sse(client, f"{PREFIX}/sse/task/busy/") as stream:
            joined.set()
            events = await stream.rest(timeout=30)
        assert events[-1].type == "end"
        results.append(seqs(events))

    readers = [asyncio.create_task(reader(random.randrange(total_batches))) for _ in range(8)]
    for b in range(total_batches):
        await fake.lines("busy", [f"batch {b} line {i}" for i in range(per_batch)])
        await asyncio.sleep(0)
    await joined.wait()
    await fake.finish("busy", messages=["done"])
    await asyncio.gather(*readers)
    expected = list(range(1, total_batches * per_batch + 2))
    assert results == [expected] * len(readers)


async def test_lost_messages_are_backfilled_from_postgres(client: Any, fake: FakeCollector) -> None:
    await fake.start("gap")
    async with sse(client, f"{PREFIX}/sse/task/gap/") as stream:
        await stream.until(lambda e: e.type == "status")
        await fake.lines("gap", ["1", "2"])
        await fake.lines("gap", ["3", "4"], publish=False)  # Redis lost these
        await fake.lines("gap", ["5"])
        got = await stream.until(lambda e: e.type == "new_log" and e.data["id"] == 5)
        assert seqs(got) == [1, 2, 3, 4, 5]
        await fake.finish("gap", messages=["6"], publish=False)  # and the end too
        # Nothing more comes through Redis: the stream's periodic re-check finds the end.
        rest = await stream.rest(timeout=20)
    assert seqs(rest) == [6] and rest[-1].type == "end"


async def test_stream_waits_for_a_task_that_has_not_started(
    client: Any, fake: FakeCollector
) -> None:
    async with sse(client, f"{PREFIX}/sse/task/later/") as stream:
        head = await stream.until(lambda e: e.type == "status")
        assert head[-1].data["status"] == "PENDING"
        await fake.start("later")
        await fake.lines("later", ["hello"])
        await fake.finish("later", "FAILURE", messages=["boom"])
        rest = await stream.rest()
    assert seqs(rest) == [1, 2]
    assert rest[-1].type == "end"
    assert [e.data["status"] for e in rest if e.type == "status"][-1] == "FAILURE"


async def test_finished_task_replays_and_ends_at_once(client: Any, fake: FakeCollector) -> None:
    await fake.start("old")
    await fake.lines("old", ["x", "y"])
    await fake.finish("old")
    async with sse(client, f"{PREFIX}/sse/task/old/?after_seq=1") as stream:
        events = await stream.rest()
    assert [e.type for e in events] == ["connected", "new_log", "status", "end"]
    assert seqs(events) == [2]


async def test_without_redis_streams_poll_postgres(database_url: str) -> None:
    settings = api_settings(database_url, "redis://127.0.0.1:1/0")
    async with (
        FakeCollector.connect(database_url, None) as fake,
        running_api(settings, wait_live=False) as client,
    ):
        await fake.start("poll")
        async with sse(client, f"{PREFIX}/sse/task/poll/") as stream:
            await stream.until(lambda e: e.type == "status")
            await fake.lines("poll", ["a", "b"])
            await fake.finish("poll", messages=["c"])
            rest = await stream.rest()
        assert seqs(rest) == [1, 2, 3] and rest[-1].type == "end"
        response = await client.get(f"{PREFIX}/healthz")
        assert response.status == 200  # degraded still answers: Postgres serves everything
        health = await response.json()
        assert health["status"] == "degraded" and health["redis"]["ok"] is False


async def test_task_list_stream(client: Any, fake: FakeCollector) -> None:
    async with sse(client, f"{PREFIX}/sse/tasks/") as stream:
        await stream.until(lambda e: e.type == "connected")
        await fake.start("listed")
        await fake.lines("listed", ["x"], progress=40)
        got = await stream.until(lambda e: e.type == "status" and e.data["progress"] == 40)
    assert got[-1].data["task_id"] == "listed" and got[-1].data["status"] == "STARTED"


async def test_test_stream(client: Any) -> None:
    async with sse(client, f"{PREFIX}/sse/test/?count=3&interval_ms=10") as stream:
        events = await stream.rest()
    assert [e.type for e in events] == ["connected", "test", "test", "test", "end"]


async def test_slow_client_is_cut_off_not_buffered_forever(
    database_url: str, redis_url: str
) -> None:
    settings = api_settings(database_url, redis_url, api_client_buffer=10)
    async with running_api(settings) as client:
        hub = client.app[keys.HUB]
        async with hub.subscribe("slow", 10) as sub:
            for i in range(50):
                sub.push({"lines": [{"seq": i}]})  # type: ignore[arg-type]  # never read
            assert sub.overflowed
            assert await sub.next_batch(0.01) == []


async def test_shutdown_ends_open_streams(database_url: str, redis_url: str) -> None:
    async with FakeCollector.connect(database_url, redis_url) as fake:
        await fake.start("long")
        async with running_api(api_settings(database_url, redis_url)) as client:
            response = await client.get(f"{PREFIX}/sse/task/long/")
            assert response.status == 200
            await response.content.readline()
            assert client.app is not None
            await client.app.shutdown()
            async with asyncio.timeout(10):
                while await response.content.readline():
                    pass
            response.close()


# -- auth ----------------------------------------------------------------------------------------


async def test_token_guards_everything_but_health(database_url: str, redis_url: str) -> None:
    settings = api_settings(database_url, redis_url, api_token="s3cret-token-0123456789")
    async with running_api(settings) as client:
        assert (await client.get(f"{PREFIX}/healthz")).status == 200
        for path in ("/api/tasks/", "/sse/task/x/", "/metrics"):
            response = await client.get(PREFIX + path)
            assert response.status == 401 and (await response.json())["error"]
        ok = await client.get(
            f"{PREFIX}/api/tasks/", headers={"Authorization": "Bearer s3cret-token-0123456789"}
        )
        assert ok.status == 200
        bad = await client.get(f"{PREFIX}/api/tasks/", headers={"Authorization": "Bearer nope"})
        assert bad.status == 401
        page = await client.get(f"{PREFIX}/", allow_redirects=False)
        assert page.status == 302 and page.headers["Location"].startswith(f"{PREFIX}/login")
        wrong = await client.post(f"{PREFIX}/login", data={"token": "x", "next": f"{PREFIX}/"})
        assert wrong.status == 401
        login = await client.post(
            f"{PREFIX}/login",
            data={"token": "s3cret-token-0123456789", "next": "https://evil.example/"},
            allow_redirects=False,
        )
        assert login.status == 302 and login.headers["Location"] == f"{PREFIX}/"
        assert (await client.get(f"{PREFIX}/api/tasks/")).status == 200  # the cookie now
