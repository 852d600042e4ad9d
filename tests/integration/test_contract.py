"""Every route of the served OpenAPI document, called with real data (a Celery worker, the
collector, Postgres, Redis), each answer validated against the document it was served with.

The tasks: one running (progress, live lines), one finished, one failed with its traceback, one
retried, one that logged, one with more lines than a page. Every documented operation must be
called and answer with its success status; errors (400, 401, 403, 404) are checked too. The
models forbid extra fields (``additionalProperties: false``), so a field a route sends without
documenting it fails here.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient

from tests.helpers import ProcessFactory, pg_rows, wait_for
from tests.integration.api_support import PREFIX, Event, api_settings, running_api, sse

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Document:
    """The served document; records which (method, path, status) real answers matched."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.seen: set[tuple[str, str, int]] = set()
        self._validators: dict[str, jsonschema_rs.Validator] = {}

    def operations(self) -> set[tuple[str, str]]:
        return {(m, p) for p, item in self.doc["paths"].items() for m in item}

    def validator(self, schema: dict[str, Any]) -> jsonschema_rs.Validator:
        key = repr(schema)
        if key not in self._validators:
            root = {**schema, "components": self.doc["components"]}
            self._validators[key] = jsonschema_rs.Draft202012Validator(root, validate_formats=True)
        return self._validators[key]

    def media(self, method: str, path: str, status: int) -> dict[str, Any]:
        responses = self.doc["paths"][PREFIX + path][method]["responses"]
        assert str(status) in responses, f"{method} {path}: status {status} is not documented"
        content: dict[str, Any] = responses[str(status)]["content"]
        return content

    async def json(self, method: str, path: str, response: ClientResponse, status: int) -> Any:
        """The body of a JSON answer with `status`, valid against the document."""
        text = await response.text()
        assert response.status == status, text[:500]
        assert response.content_type == "application/json", response.content_type
        body = await response.json()
        schema = self.media(method, path, status)["application/json"]["schema"]
        self.validator(schema).validate(body)
        self.seen.add((method, path, status))
        return body

    async def text(self, method: str, path: str, response: ClientResponse) -> str:
        assert response.status == 200, await response.text()
        assert response.content_type in self.media(method, path, 200), response.content_type
        self.seen.add((method, path, 200))
        return await response.text()

    def events(self, path: str, events: list[Event]) -> None:
        """Each event's data valid against the documented event of its ``type``."""
        schema = self.media("get", path, 200)["text/event-stream"]["schema"]
        kinds = schema["discriminator"]["mapping"]
        for event in events:
            assert event.type in kinds, f"{path}: undocumented event {event.data}"
            self.validator({"$ref": kinds[event.type]}).validate(event.data)
            self.validator(schema).validate(event.data)
        self.seen.add(("get", path, 200))


def stored(database_url: str, sql: str, args: tuple[Any, ...]) -> bool:
    return bool(pg_rows(database_url, sql, args))


async def wait_rows(database_url: str, sql: str, args: tuple[Any, ...], what: str) -> None:
    await asyncio.to_thread(wait_for, lambda: stored(database_url, sql, args), 60, 0.05, what)


async def test_every_documented_route_answers_real_data_as_documented(
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
) -> None:
    procs.collector(
        database_url=database_url, redis_url=redis_url, spool_dir=spool_dir, ready="following"
    )
    procs.worker(redis_url=redis_url, spool_dir=spool_dir, pool="threads", concurrency=4)
    send = celery_client.send_task
    running = send("demo.demo_long_task", kwargs={"duration": 8, "steps": 16})
    done = {
        "quick": send("demo.demo_quick_task"),
        "failing": send("demo.demo_failing_task"),
        "logged": send("demo.log_task"),
        "retried": send("demo.retry_task"),
        "long": send("demo.print_lines", kwargs={"count": 30, "stderr_every": 10}),
    }
    workflow = send("demo.demo_workflow", kwargs={"width": 2, "lines": 2, "delay": 0})
    ids = [r.id for r in done.values()]
    await wait_rows(
        database_url,
        "SELECT 1 FROM tasks WHERE task_id = ANY(%s) AND tasklog_finished(state)"
        " HAVING count(*) = %s",
        (ids, len(ids)),
        "the finished tasks stored",
    )
    await wait_rows(
        database_url,
        "SELECT 1 FROM tasks WHERE root_id = %s HAVING count(*) FILTER (WHERE state = 'SUCCESS')"
        " = 5",  # the starter, extract, two transforms, the chord's body
        (workflow.id,),
        "the workflow done",
    )
    await wait_rows(
        database_url,
        "SELECT 1 FROM tasks WHERE task_id = %s AND state = 'PROGRESS' AND last_seq >= 2",
        (running.id,),
        "the long task running",
    )
    settings = api_settings(database_url, redis_url, api_demo_launch=True)
    async with running_api(settings) as client:
        served = await (await client.get(f"{PREFIX}/api/openapi.json")).json()
        doc = Document(served)
        await _routes(client, doc, running.id, {k: r.id for k, r in done.items()}, workflow.id)
        # Every documented operation was called, and answered with its success status.
        called = {(m, PREFIX + p) for m, p, status in doc.seen if status < 300}
        assert called == doc.operations(), doc.operations() - called
    async with running_api(
        api_settings(database_url, redis_url, api_token="t0ken-of-16-characters")
    ) as client:
        # 401 with the token required; health stays public
        response = await client.get(f"{PREFIX}/api/tasks/")
        await doc.json("get", "/api/tasks/", response, 401)
        terse = await doc.json("get", "/healthz", await client.get(f"{PREFIX}/healthz"), 200)
        assert terse == {"status": "ok"}  # details only with the token
    no_launch = api_settings(database_url, redis_url, api_demo_launch=False, api_max_streams=1)
    async with running_api(no_launch) as client:
        response = await client.post(f"{PREFIX}/api/launch/", json={"task": "demo.print_text"})
        await doc.json("post", "/api/launch/", response, 404)
        # Without a token, a Host that is not a loopback name (DNS rebinding) on any route
        foreign = await client.get(f"{PREFIX}/healthz", headers={"Host": "evil.example"})
        await doc.json("get", "/healthz", foreign, 421)
        # A stream beyond TASKLOG_API_MAX_STREAMS, refused with Retry-After
        async with sse(client, f"{PREFIX}/sse/test/?count=1000") as stream:
            await stream.next()
            full = await client.get(f"{PREFIX}/sse/tasks/")
            assert int(full.headers["Retry-After"]) > 0
            await doc.json("get", "/sse/tasks/", full, 503)


async def _routes(
    client: TestClient[web.Request, web.Application],
    doc: Document,
    running: str,
    done: dict[str, str],
    workflow: str,
) -> None:
    get = client.get

    # -- the task list, every page, running and finished tasks in it
    page: dict[str, Any] = await doc.json(
        "get", "/api/tasks/", await get(f"{PREFIX}/api/tasks/?limit=2"), 200
    )
    tasks = list(page["results"])
    while page["next"]:
        page = await doc.json("get", "/api/tasks/", await client.session.get(page["next"]), 200)
        tasks += page["results"]
    by_id = {t["task_id"]: t for t in tasks}
    assert {running, *done.values(), workflow} <= set(by_id)
    assert by_id[running]["finished"] is False and by_id[running]["status"] == "PROGRESS"
    assert by_id[done["retried"]]["retries"] == 1
    runs = f"{PREFIX}/api/tasks/{done['retried']}/"
    retried = await doc.json("get", "/api/tasks/{task_id}/", await get(runs), 200)
    assert [r["state"] for r in retried["runs"]] == ["RETRY", "SUCCESS"]
    assert by_id[done["quick"]]["worker"] and by_id[done["quick"]]["pid"]
    query = "/api/tasks/?state=failure,SUCCESS&name=demo.demo_failing_task"
    failed = await doc.json("get", "/api/tasks/", await get(PREFIX + query), 200)
    assert [t["task_id"] for t in failed["results"]] == [done["failing"]]
    await doc.json("get", "/api/tasks/", await get(f"{PREFIX}/api/tasks/?limit=0"), 400)

    # -- details: a failure with its traceback, a page of lines and the next, a running task
    detail = "/api/tasks/{task_id}/"
    failure = await doc.json(
        "get", detail, await get(f"{PREFIX}/api/tasks/{done['failing']}/"), 200
    )
    assert failure["traceback"] and "Demo failure" in failure["traceback"]
    assert failure["exc_type"] == "Exception" and failure["finished"] is True
    lines = await doc.json(
        "get", detail, await get(f"{PREFIX}/api/tasks/{done['long']}/?limit=10"), 200
    )
    assert [x["id"] for x in lines["logs"]] == list(range(1, 11)) and lines["next"]
    rest = await doc.json("get", detail, await client.session.get(lines["next"]), 200)
    assert rest["logs"][0]["id"] == 11 and "stderr" in {x["stream"] for x in rest["logs"]}
    logged = await doc.json("get", detail, await get(f"{PREFIX}/api/tasks/{done['logged']}/"), 200)
    assert {"log", "stdout"} <= {x["stream"] for x in logged["logs"]}
    live = await doc.json("get", detail, await get(f"{PREFIX}/api/tasks/{running}/"), 200)
    assert live["finished"] is False and live["progress"] is not None
    await doc.json("get", detail, await get(f"{PREFIX}/api/tasks/nope/"), 404)
    await doc.json("get", detail, await get(f"{PREFIX}/api/tasks/x/?after_seq=-1"), 400)
    raw = "/api/tasks/{task_id}/raw"
    assert "About to fail" in await doc.text(
        "get", raw, await get(f"{PREFIX}/api/tasks/{done['failing']}/raw")
    )
    await doc.json("get", raw, await get(f"{PREFIX}/api/tasks/nope/raw"), 404)

    # -- a workflow (chain, group, chord): its tasks, and its merged stream
    tree = "/api/workflows/{root_id}/"
    flow = await doc.json("get", tree, await get(f"{PREFIX}/api/workflows/{workflow}/"), 200)
    assert len(flow["tasks"]) == 5 and flow["truncated"] is False
    await doc.json("get", tree, await get(f"{PREFIX}/api/workflows/no-such-root/"), 404)
    kinds: set[str] = set()

    def both(event: Event) -> bool:
        kinds.add(event.type)
        return {"new_log", "status"} <= kinds

    async with sse(client, f"{PREFIX}/sse/workflow/{workflow}/") as stream:
        events = await stream.until(both)
    assert events[0].type == "connected"
    doc.events("/sse/workflow/{root_id}/", events)

    # -- search
    found = await doc.json(
        "get", "/api/search/", await get(f"{PREFIX}/api/search/?q=line%201&stream=stdout"), 200
    )
    assert found["results"] and found["results"][0]["match"]
    await doc.json("get", "/api/search/", await get(f"{PREFIX}/api/search/?q="), 400)

    # -- a workflow (a task sent alone is the root of its own) and its merged stream
    flow = "/api/workflows/{root_id}/"
    alone = await doc.json("get", flow, await get(f"{PREFIX}/api/workflows/{done['long']}/"), 200)
    assert [t["task_id"] for t in alone["tasks"]] == [done["long"]]
    await doc.json("get", flow, await get(f"{PREFIX}/api/workflows/nope/"), 404)
    async with sse(client, f"{PREFIX}/sse/workflow/{done['long']}/") as stream:
        events = await stream.until(lambda e: e.type == "new_log" and e.data["id"] == 30)
    assert events[0].type == "connected" and {"status", "new_log"} <= {e.type for e in events}
    doc.events("/sse/workflow/{root_id}/", events)
    bad = await get(f"{PREFIX}/sse/workflow/x/", headers={"Last-Event-ID": "abc"})
    await doc.json("get", "/sse/workflow/{root_id}/", bad, 400)

    # -- the running task's stream, from its first line to `end`
    async with sse(client, f"{PREFIX}/sse/task/{running}/") as stream:
        events = await stream.rest(timeout=60)
    assert events[0].type == "connected" and events[-1].type == "end"
    assert {"new_log", "status"} <= {e.type for e in events}
    doc.events("/sse/task/{task_id}/", events)
    bad = await get(f"{PREFIX}/sse/task/x/", headers={"Last-Event-ID": "abc"})
    await doc.json("get", "/sse/task/{task_id}/", bad, 400)

    # -- every task's changes since the tasks started (a stream that never ends: read some)
    since = min(t["created_at"] for t in tasks).replace("+", "%2B")
    async with sse(client, f"{PREFIX}/sse/tasks/?since={since}") as stream:
        events = await stream.until(lambda e: e.data.get("task_id") == running)
    assert events[0].type == "connected" and events[-1].type == "status"
    doc.events("/sse/tasks/", events)
    await doc.json("get", "/sse/tasks/", await get(f"{PREFIX}/sse/tasks/?since=x"), 400)

    async with sse(client, f"{PREFIX}/sse/test/?count=2&interval_ms=10") as stream:
        events = await stream.rest()
    assert [e.type for e in events] == ["connected", "test", "test", "end"]
    doc.events("/sse/test/", events)

    # -- launch: accepted, bad input, another site's page
    launch = "/api/launch/"
    body = {"task": "demo.print_text", "kwargs": {"text": "hi"}}
    launched = await doc.json("post", launch, await client.post(PREFIX + launch, json=body), 202)
    assert launched["url"].endswith(f"/task/{launched['task_id']}/")
    wrong = {"task": "demo.print_text", "kwargs": {"colour": 1}}
    await doc.json("post", launch, await client.post(PREFIX + launch, json=wrong), 400)
    foreign = await client.post(
        PREFIX + launch, json=body, headers={"Origin": "https://evil.example"}
    )
    await doc.json("post", launch, foreign, 403)

    # -- health, diagnostics (the real collector's heartbeat), metrics, the document itself
    health = await doc.json("get", "/healthz", await get(f"{PREFIX}/healthz"), 200)
    assert health["status"] == "ok"
    diag = await doc.json("get", "/api/diagnostic/", await get(f"{PREFIX}/api/diagnostic/"), 200)
    assert diag["collectors"] and diag["collectors"][0]["stats"]
    assert "tasklog_api_sse_clients" in await doc.text(
        "get", "/metrics", await get(f"{PREFIX}/metrics")
    )
    document = await get(f"{PREFIX}/api/openapi.json")
    assert (await doc.json("get", "/api/openapi.json", document, 200))["openapi"] == "3.1.0"

    # A field nobody documented would fail: the schemas are closed.
    schema = doc.media("get", "/api/tasks/", 200)["application/json"]["schema"]
    undocumented = {**page, "results": [{**tasks[0], "colour": "red"}]}
    assert not doc.validator(schema).is_valid(undocumented)
