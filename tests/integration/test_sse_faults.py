"""Streams under faults, with the real `tasklog api` process: a client that stops reading is
dropped by the send timeout and resumes with Last-Event-ID, no gap and no duplicate; Postgres
stopped and started under open streams: they wait and resume, JSON answers 503, healthz says
``down``, then all recover."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tasklog.demo.embedded_postgres import EmbeddedPostgres
from tests.helpers import ProcessFactory, wait_for
from tests.integration.api_support import (
    PREFIX,
    Event,
    FakeCollector,
    SSEReader,
    follow,
    http,
    metric,
    seqs,
    start_api,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


# -- a client that stops reading -----------------------------------------------------------------


class StalledClient:
    """An SSE client on a plain socket with a small receive buffer, which it can stop reading.

    HTTP/1.0, so the body is the bare event stream (no chunked framing) and ends with the
    connection."""

    def __init__(self, port: int, path: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(30)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        self.data = b""

    def read_until(self, marker: bytes) -> None:
        while marker not in self.data:
            chunk = self.sock.recv(65536)
            assert chunk, f"closed before {marker!r}: {self.data[-300:]!r}"
            self.data += chunk

    def drain(self) -> str:
        """Whatever is left until the server's close or reset."""
        try:
            while chunk := self.sock.recv(65536):
                self.data += chunk
        except ConnectionResetError:
            pass  # aborted by the server: what it had sent and we had read is what we have
        finally:
            self.sock.close()
        return "reset or closed"

    def events(self) -> list[tuple[int | None, dict[str, Any]]]:
        """The complete events received (one cut in the middle is not an event)."""
        head, _, body = self.data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"), head
        out = []
        for block in body.split(b"\r\n\r\n")[:-1]:  # the last piece is incomplete or empty
            event_id, data = None, []
            for line in block.decode().split("\r\n"):
                if line.startswith("id: "):
                    event_id = int(line[4:])
                elif line.startswith("data: "):
                    data.append(line[6:])
            if data:
                out.append((event_id, json.loads("\n".join(data))))
        return out


async def test_a_client_that_stops_reading_is_dropped_then_resumes_without_gap_or_duplicate(
    procs: ProcessFactory, database_url: str, redis_url: str
) -> None:
    api, base = start_api(
        procs,
        database_url,
        redis_url,
        TASKLOG_API_SEND_TIMEOUT="1",
        TASKLOG_API_CLIENT_BUFFER="10",
        TASKLOG_API_SSE_HEARTBEAT="0.5",
    )
    port = int(base.rsplit(":", 1)[1])
    big = "x" * 20_000  # lines this long fill the socket buffers in a few hundred lines
    batches, per_batch = 30, 20
    async with FakeCollector.connect(database_url, redis_url) as fake, http() as session:
        await fake.start("slow")
        await fake.lines("slow", [f"{i:04d} {big}" for i in range(1, per_batch + 1)])
        client = await asyncio.to_thread(StalledClient, port, f"{PREFIX}/sse/task/slow/")
        # The replay has begun, its first event whole: the server will abort the connection,
        # and an abort drops what the client's socket holds unread.
        await asyncio.to_thread(client.read_until, b"id: 2\r\n")
        # The client reads no more; the collector keeps storing and publishing.
        for batch in range(1, batches):
            first = batch * per_batch + 1
            await fake.lines("slow", [f"{i:04d} {big}" for i in range(first, first + per_batch)])
        await asyncio.to_thread(
            wait_for,
            lambda: "TASKLOG_API_SEND_TIMEOUT" in api.log_text(),
            30,
            0.1,
            "the API to drop the stalled client",
        )
        assert "dropped a client of task slow" in api.log_text()
        assert await metric(session, base, "tasklog_api_sse_send_timeouts_total") == 1
        await asyncio.to_thread(client.drain)
        before = [event_id for event_id, data in client.events() if data["type"] == "new_log"]
        total = batches * per_batch
        assert before == list(range(1, len(before) + 1))
        assert len(before) < total  # it was cut off before the end
        # The browser's EventSource reconnects with the last id it got.
        await fake.finish("slow")
        response = await session.get(
            f"{base}{PREFIX}/sse/task/slow/", headers={"Last-Event-ID": str(before[-1])}
        )
        assert response.status == 200
        after_events = await SSEReader(response).rest(timeout=30)
        response.close()
        after = seqs(after_events)
        assert before + after == list(range(1, total + 1))  # no gap, no duplicate
        assert after_events[-1].type == "end"
        print(
            f"stalled client: {len(before)} lines before the cut, {len(after)} after resuming;"
            f" {total} x {len(big) // 1000} KB"
        )


async def test_a_stalled_client_in_step_with_others_holds_none_of_them_up(
    procs: ProcessFactory, database_url: str, redis_url: str
) -> None:
    """Clients in step with their task are written by its broadcast (`api.broadcast`): one
    that stops reading goes back to a stream of its own, is dropped, and resumes without gap
    or duplicate, while the others get every line, once and in order."""
    api, base = start_api(
        procs,
        database_url,
        redis_url,
        TASKLOG_API_SEND_TIMEOUT="1",
        TASKLOG_API_SSE_HEARTBEAT="0.5",
    )
    port = int(base.rsplit(":", 1)[1])
    big = "x" * 20_000
    async with FakeCollector.connect(database_url, redis_url) as fake, http() as session:
        await fake.start("many")
        await fake.lines("many", ["a", "b"])
        stalled = await asyncio.to_thread(StalledClient, port, f"{PREFIX}/sse/task/many/")
        await asyncio.to_thread(stalled.read_until, b"id: 2\r\n")
        async with follow(session, base, "many") as quick:
            await quick.until(lambda e: e.data.get("id") == 2)
            # Live lines, both reading, until both are in step with the task's broadcast.
            for _ in range(100):
                last = (await fake.lines("many", ["c"]))[-1]["seq"]
                await quick.until(_line(last))
                await asyncio.to_thread(stalled.read_until, f"id: {last}\r\n".encode())
                if await metric(session, base, "tasklog_api_sse_broadcast_members") == 2:
                    break
            else:
                raise AssertionError("the clients never got in step with the task's broadcast")
            # One stops reading; lines keep coming, big enough to fill its socket buffers.
            in_step = fake.tasks["many"].last_seq
            for _ in range(30):
                await fake.lines("many", [big] * 20)
            total = fake.tasks["many"].last_seq
            events = await quick.until(_line(total), timeout=60)
            assert seqs(events) == list(range(in_step + 1, total + 1))
            await asyncio.to_thread(
                wait_for,
                lambda: (
                    "dropped a client of task many" in api.log_text()
                    or "cutting off a slow client of task many" in api.log_text()
                ),
                30,
                0.1,
                "the API to drop the stalled client",
            )
            await asyncio.to_thread(stalled.drain)
            before = [i for i, data in stalled.events() if data["type"] == "new_log"]
            assert before == list(range(1, len(before) + 1))
            assert len(before) < total
            await fake.finish("many")
            rest = await quick.rest(timeout=30)
            assert seqs(rest) == [] and rest[-1].type == "end"
        response = await session.get(
            f"{base}{PREFIX}/sse/task/many/", headers={"Last-Event-ID": str(before[-1])}
        )
        after_events = await SSEReader(response).rest(timeout=30)
        response.close()
        assert before + seqs(after_events) == list(range(1, total + 1))
        assert after_events[-1].type == "end"


def _line(seq: int) -> Callable[[Event], bool]:
    return lambda event: event.type == "new_log" and event.data["id"] == seq


# -- Postgres stopped and started ----------------------------------------------------------------


async def test_postgres_stopped_and_started_under_open_streams(
    procs: ProcessFactory, embedded_pg: EmbeddedPostgres, redis_url: str
) -> None:
    database_url = embedded_pg.url("tasklog")
    api, base = start_api(
        procs,
        database_url,
        redis_url,
        TASKLOG_API_SSE_HEARTBEAT="0.5",
        TASKLOG_API_SSE_RESYNC="1",
        TASKLOG_API_DB_WAIT="1",
    )
    async with FakeCollector.connect(database_url, redis_url) as fake, http() as session:
        await fake.start("job")
        await fake.lines("job", [f"before {i}" for i in range(1, 51)])
        async with (
            follow(session, base, "job") as stream,
            follow(session, base, "job") as other,
        ):
            for reader in (stream, other):
                got = await reader.until(lambda e: e.type == "status")  # after the replay
                assert seqs(got) == list(range(1, 51))
            listing = await session.get(f"{base}{PREFIX}/sse/tasks/")
            assert listing.status == 200
            tasks_stream = SSEReader(listing)
            await tasks_stream.next()  # connected

            await asyncio.to_thread(embedded_pg.stop)
            # JSON answers 503 with one line; healthz says down.
            for path in ("/api/tasks/", "/api/tasks/job/", "/api/tasks/job/raw"):
                response = await session.get(f"{base}{PREFIX}{path}")
                body = await response.json()
                assert response.status == 503, (path, body)
                assert body["status"] == 503 and "\n" not in body["error"]
                assert "Traceback" not in body["error"]
            health = await session.get(f"{base}{PREFIX}/healthz")
            report = await health.json()
            assert health.status == 503 and report["status"] == "down"
            assert report["postgres"]["ok"] is False
            # The diagnostic report is about the outage: it answers, and says so.
            diagnostic = await (await session.get(f"{base}{PREFIX}/api/diagnostic/")).json()
            assert diagnostic["status"] == "down" and diagnostic["collectors"] is None
            # A new stream cannot start (its first read is Postgres): 503, not a hang.
            refused = await session.get(f"{base}{PREFIX}/sse/task/job/")
            assert refused.status == 503
            refused.close()
            # The open streams wait: heartbeats go on, nothing else, nothing ends.
            beats = stream.heartbeats
            try:
                unexpected = await stream.next(timeout=3)
            except TimeoutError:
                unexpected = None
            else:
                raise AssertionError(f"the stream should wait, it sent {unexpected}")
            assert stream.heartbeats > beats

            await asyncio.to_thread(embedded_pg.start)
            await fake.conn.close()
            fake.conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
            await fake.lines("job", [f"after {i}" for i in range(51, 101)])
            await fake.finish("job")
            for reader in (stream, other):
                rest = await reader.rest(timeout=30)
                assert seqs(rest) == list(range(51, 101))
                assert rest[-1].type == "end" and rest[-1].data["last_seq"] == 100
            # The task list stream tells of the end (a Redis shared with other tasklog
            # processes carries their tasks too: wait on this one; `until` fails on time-out).
            await tasks_stream.until(
                lambda e: (
                    e.type == "status"
                    and e.data["task_id"] == "job"
                    and e.data["status"] == "SUCCESS"
                ),
                timeout=30,
            )
            listing.close()

        # Everything answers again.
        async def recovered() -> bool:
            health = await session.get(f"{base}{PREFIX}/healthz")
            return health.status == 200 and (await health.json())["status"] == "ok"

        async with asyncio.timeout(20):
            while not await recovered():
                await asyncio.sleep(0.2)
        tasks = await session.get(f"{base}{PREFIX}/api/tasks/")
        assert tasks.status == 200
        assert [t["task_id"] for t in (await tasks.json())["results"]] == ["job"]
        detail = await (await session.get(f"{base}{PREFIX}/api/tasks/job/")).json()
        assert detail["log_count"] == 100 and detail["status"] == "SUCCESS"
        await fake.conn.close()  # the one opened after the restart
    assert "Traceback" not in api.log_text()
    assert api.alive
