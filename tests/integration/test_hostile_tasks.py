"""What one task writes stays inside that task (issue 20): attacks made as a hostile task would
make them, on a real collector and a real Postgres, while good tasks keep flowing through.

Each test is a row of the fault table in docs/RELIABILITY.md.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import psycopg
import pytest
import redis.asyncio
import redis.exceptions
from celery import Celery

from capture_shim import spool
from collector import clock
from tests.helpers import REPO_ROOT, Proc, ProcessFactory, free_port, pg_rows, tasklog_cli, wait_for
from tests.integration.api_support import PREFIX, follow, http, metric, start_api
from tests.integration.test_collector_faults import write_backlog

QUICK = {"TASKLOG_HEARTBEAT_INTERVAL": "0.2", "TASKLOG_RESCAN_INTERVAL": "0.2"}
DAY = 86400.0


def record(**fields: object) -> bytes:
    return (json.dumps(fields) + "\n").encode()


def start(task_id: str, t: float | None = None, **extra: object) -> bytes:
    t = time.time() if t is None else t
    fields = {"name": "hostile", **extra}
    return record(k="start", v=spool.VERSION, t=t, task_id=task_id, **fields)


def line(n: int, text: str, t: float | None = None) -> bytes:
    return record(k="line", n=n, t=time.time() if t is None else t, s="stdout", m=text)


def end(state: str = "SUCCESS", t: float | None = None, **extra: object) -> bytes:
    t = time.time() if t is None else t
    return record(**{"k": "end", "t": t, "state": state, "errors": 0, **extra})


def good_task(task_id: str, lines: int = 3) -> bytes:
    body = b"".join(line(n, f"{task_id} {n}") for n in range(1, lines + 1))
    return start(task_id) + body + end()


def write(spool_dir: Path, stem: str, data: bytes, ns: int | None = None) -> Path:
    ns = time.time_ns() if ns is None else ns
    path = spool_dir / f"{stem}.{os.getpid()}.{ns}{spool.SUFFIX}"
    path.write_bytes(data)
    return path


def stored(url: str, ids: list[str], lines: int = 3) -> bool:
    rows = pg_rows(
        url,
        "SELECT t.task_id, t.state, count(l.seq) FROM tasks t LEFT JOIN lines l USING (task_id) "
        "WHERE t.task_id = ANY(%s) GROUP BY 1, 2",
        (ids,),
    )
    return sorted(rows) == [(i, "SUCCESS", lines) for i in sorted(ids)]


def stats(url: str) -> dict[str, object]:
    rows = pg_rows(url, "SELECT stats FROM collectors")
    return rows[0][0] if rows else {}


def partitions(url: str) -> list[str]:
    return [
        name
        for (name,) in pg_rows(
            url,
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'lines' ORDER BY 1",
        )
    ]


def collector(procs: ProcessFactory, url: str, spool_dir: Path, **env: str) -> Proc:
    return procs.collector(
        database_url=url, spool_dir=spool_dir, ready="following", env={**QUICK, **env}
    )


# -- 1. the time bomb --------------------------------------------------------------------------


def test_lines_dated_on_3000_days_make_a_bounded_number_of_partitions(
    procs: ProcessFactory, database_url: str, spool_dir: Path
) -> None:
    """A 3,000-line file dating each line on another day (2000..2100), and a start record in
    2099: every line is stored, clamped into the run's window; a handful of partitions."""
    proc = collector(procs, database_url, spool_dir)
    write(spool_dir, "good-before", good_task("good-before"))
    wait_for(lambda: stored(database_url, ["good-before"]), message="a good task stored")
    before = partitions(database_url)

    now = time.time()
    bomb = start("bomb", t=4_070_000_000.0, max_lines=10_000) + b"".join(
        line(n, f"bomb {n}", t=946_684_800.0 + n * 1.1 * DAY) for n in range(1, 3001)
    )
    write(spool_dir, "bomb", bomb + end(t=4_100_000_000.0))
    goods = [f"good-{i}" for i in range(5)]
    for task_id in goods:
        write(spool_dir, task_id, good_task(task_id))

    wait_for(lambda: stored(database_url, goods), message="the good tasks stored")
    wait_for(
        lambda: (
            pg_rows(database_url, "SELECT count(*) FROM lines WHERE task_id = 'bomb'") == [(3000,)]
        ),
        message="all 3,000 lines of the hostile task stored",
    )
    after = partitions(database_url)
    print(f"\npartitions before the attack {len(before)}, after {len(after)}")
    assert len(after) - len(before) <= clock.MAX_NEW_PARTITIONS, after
    low, high, started, completed = pg_rows(
        database_url,
        "SELECT min(extract(epoch FROM l.ts)), max(extract(epoch FROM l.ts)), "
        "extract(epoch FROM t.started_at), extract(epoch FROM t.completed_at) "
        "FROM lines l JOIN tasks t USING (task_id) WHERE task_id = 'bomb' "
        "GROUP BY t.started_at, t.completed_at",
    )[0]
    ceiling = time.time() + clock.SKEW
    floor = now - 31 * DAY - clock.SKEW  # the retention window (30 days) and a day
    assert floor <= float(started) <= ceiling  # the start in 2099 is held to now
    assert floor <= float(low) <= float(high) <= ceiling
    assert float(completed) <= ceiling
    assert float(low) >= float(started) - clock.SKEW
    wait_for(
        lambda: int(stats(database_url).get("times_clamped", 0)) >= 3000,  # type: ignore[call-overload]
        message="clamped times counted",
    )
    # Seqs and text untouched: only the dates moved.
    rows = pg_rows(
        database_url, "SELECT seq, message FROM lines WHERE task_id = 'bomb' ORDER BY seq"
    )
    assert rows == [(n, f"bomb {n}") for n in range(1, 3001)]

    write(spool_dir, "good-after", good_task("good-after"))
    wait_for(lambda: stored(database_url, ["good-after"]), message="a later task stored")
    assert proc.alive
    assert "Traceback" not in proc.log_text()


def test_retention_drops_partitions_of_days_still_to_come(database_url: str) -> None:
    """Partitions an older collector made for far-future days (the time bomb's debris) go at
    the next prune; today's stays."""
    today = datetime.now(UTC).date()
    days = [today, today + timedelta(days=1), today + timedelta(days=3), today.replace(year=2090)]
    with psycopg.connect(database_url, autocommit=True) as conn:
        for day in days:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS lines_{day:%Y%m%d} PARTITION OF lines FOR VALUES "
                f"FROM ('{day} 00:00:00+00') TO ('{day + timedelta(days=1)} 00:00:00+00')"
            )
    result = subprocess.run(
        [sys.executable, "-m", "tasklog", "prune"],
        env={
            "PATH": os.environ.get("PATH", ""),
            "TASKLOG_DATABASE_URL": database_url,
            "TASKLOG_RETENTION_DAYS": "30",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    left = partitions(database_url)
    assert f"lines_{today:%Y%m%d}" in left
    assert f"lines_{today + timedelta(days=3):%Y%m%d}" not in left
    assert f"lines_{today.replace(year=2090):%Y%m%d}" not in left


# -- 2. search isolation -----------------------------------------------------------------------

#: Backtracking without end in Postgres's regex engine over a line of a's ending in "ab".
CATASTROPHIC = r"^(((a+)\3)+)+\1b"


async def until_true(predicate: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    """Poll a blocking `predicate` in a thread (the loop keeps serving the test's clients)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last {value!r}")
        await asyncio.sleep(0.1)


def running_regexes(url: str) -> int:
    rows = pg_rows(
        url,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND state = 'active' AND query LIKE %s AND pid <> pg_backend_pid()",
        ("%message ~*%",),
    )
    return int(rows[0][0])


async def test_catastrophic_regexes_leave_the_task_list_detail_and_health_answering(
    procs: ProcessFactory, database_url: str, redis_url: str, spool_dir: Path
) -> None:
    """Twice as many catastrophic regex searches as the search pool holds: the list, a task's
    detail and /healthz answer while they run, a task stored meanwhile is listed, the searches
    beyond the pool get a 503 with Retry-After, and searches whose clients leave stop in
    Postgres long before their timeout."""
    collector(procs, database_url, spool_dir)
    hostile = start("regex-bait") + line(1, "a" * 60 + "b") + end()
    write(spool_dir, "regex-bait", hostile)
    write(spool_dir, "good-0", good_task("good-0"))
    await until_true(lambda: stored(database_url, ["good-0"]), "a good task stored")
    _, base = start_api(
        procs,
        database_url,
        redis_url,
        TASKLOG_API_SEARCH_CONNECTIONS="2",
        TASKLOG_API_REGEX_TIMEOUT="120",
        TASKLOG_API_DB_POOL_SIZE="2",
        TASKLOG_API_DB_WAIT="3",
    )
    search = f"{base}{PREFIX}/api/search/"
    query = {"q": CATASTROPHIC, "regex": "1"}
    timeout = aiohttp.ClientTimeout(total=180)
    async with aiohttp.ClientSession(timeout=timeout) as searches, http() as others:
        held = [
            asyncio.create_task(searches.get(search, params=query), name=f"search-{i}")
            for i in range(2)
        ]
        await until_true(lambda: running_regexes(database_url) == 2, "2 regexes in Postgres")
        # Beyond the search pool: refused after TASKLOG_API_DB_WAIT, with a retry hint.
        async with others.get(search, params=query) as extra:
            assert extra.status == 503
            assert extra.headers["Retry-After"] == "5"
            assert "TASKLOG_API_SEARCH_CONNECTIONS" in (await extra.json())["error"]

        write(spool_dir, "good-1", good_task("good-1"))
        answered: dict[str, int] = {}
        for _ in range(5):  # each route several times: none waits for the searches
            for name, path in (
                ("list", "/api/tasks/"),
                ("detail", "/api/tasks/good-0/"),
                ("health", "/healthz"),
            ):
                async with others.get(f"{base}{PREFIX}{path}") as response:
                    answered[name] = response.status
                    assert response.status == 200, (name, await response.text())

        async def listed() -> bool:
            async with others.get(f"{base}{PREFIX}/api/tasks/") as response:
                body = await response.json()
            return any(task["task_id"] == "good-1" for task in body["results"])

        deadline = time.monotonic() + 30
        while not await listed():
            assert time.monotonic() < deadline, "a task stored during the attack is listed"
            await asyncio.sleep(0.1)
        async with others.get(f"{base}{PREFIX}/healthz") as response:
            assert response.status == 200
            assert (await response.json())["status"] == "ok"
        # All of that happened while the regexes still ran (their timeout is 120 s).
        assert running_regexes(database_url) == 2
        assert not any(task.done() for task in held)

        # The searching clients leave: their statements are cancelled in Postgres.
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
    await until_true(
        lambda: running_regexes(database_url) == 0, "the regexes cancelled in Postgres", 20
    )
    assert answered == {"list": 200, "detail": 200, "health": 200}


# -- 3. smaller ones ---------------------------------------------------------------------------


def test_tasklog_tasks_shows_escapes_in_ids_names_and_states_as_text(
    procs: ProcessFactory, database_url: str, spool_dir: Path
) -> None:
    """A task whose id, name and state hold terminal sequences (clear the screen, write the
    clipboard, set the title, a C1 CSI): `tasklog tasks` shows them escaped, the table aligned."""
    collector(procs, database_url, spool_dir)
    hostile_id = "evil\x1b]52;c;cm0gLXJmIH4=\x07id"
    data = (
        start(hostile_id, name="\x1b[2J\x1b[Hname\x9b31m")
        + line(1, "hello")
        + end(state="SUC\x1b]0;pwned\x07")
    )
    write(spool_dir, spool.safe_name(hostile_id), data)
    write(spool_dir, "good-0", good_task("good-0"))
    wait_for(lambda: stored(database_url, ["good-0"]), message="a good task stored")
    wait_for(
        lambda: pg_rows(database_url, "SELECT 1 FROM tasks WHERE task_id = %s", (hostile_id,)),
        message="the hostile task stored",
    )
    result = tasklog_cli("tasks", env={"TASKLOG_DATABASE_URL": database_url})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert not any(c in out for c in "\x1b\x07\x9b"), repr(out)
    rows = out.splitlines()
    assert "evil\\x1b]52;c;cm0gLXJmIH4=\\x07id"[:36] in out
    assert "\\x1b[2J\\x1b[Hname\\x9b31m" in out
    assert any(row.startswith("good-0 ") for row in rows)
    # Every row as wide as the header up to the state column: escapes never shift columns.
    header = rows[0].index("STATE")
    assert all(len(row) > header and row[header - 2 : header] == "  " for row in rows[1:])


def search_cursor(ts: object, task_id: object, seq: object) -> str:
    raw = json.dumps([ts, task_id, seq]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def test_hostile_search_cursors_and_times_are_clear_400s(
    procs: ProcessFactory, database_url: str, redis_url: str, spool_dir: Path
) -> None:
    """Search cursors holding NUL, a lone surrogate, `seq: true`, a time in year 1; `until`,
    `since` at the ends of the calendar: each a 400 naming the parameter, and the search still
    works afterwards (before: 500s, and a 503 blaming an older schema)."""
    collector(procs, database_url, spool_dir)
    write(spool_dir, "good-0", good_task("good-0"))
    await until_true(lambda: stored(database_url, ["good-0"]), "a good task stored")
    api, base = start_api(procs, database_url, redis_url)
    now = datetime.now(UTC).isoformat()
    cursors = {
        "nul in id": search_cursor(now, "a\x00b", 1),
        "lone surrogate": search_cursor(now, "a\ud800b", 1),
        "seq true": search_cursor(now, "good-0", True),
        "seq past bigint": search_cursor(now, "good-0", 2**64),
        "year 1": search_cursor("0001-01-01T00:00:00+00:00", "good-0", 1),
        "naive time": search_cursor("2026-01-01T00:00:00", "good-0", 1),
    }
    times = {
        "until": ["0001-01-01T00:00:00", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"],
        "since": ["0001-01-01T00:00:00", "9999-12-31T23:59:59"],
    }
    search = f"{base}{PREFIX}/api/search/"
    async with http() as session:
        for what, cursor in cursors.items():
            async with session.get(search, params={"q": "good", "cursor": cursor}) as response:
                body = await response.json()
                assert response.status == 400, (what, body)
                assert body["error"].startswith("cursor: "), (what, body)
        for name, values in times.items():
            for value in values:
                async with session.get(search, params={"q": "good", name: value}) as response:
                    body = await response.json()
                    assert response.status == 400, (name, value, body)
                    assert body["error"].startswith(f"{name}: expected a time between"), body
        async with session.get(
            f"{base}{PREFIX}/api/tasks/", params={"since": "0001-01-01T00:00:00"}
        ) as response:
            assert response.status == 400
        async with session.get(search, params={"q": "good-0"}) as response:
            assert response.status == 200
            assert len((await response.json())["results"]) == 3
    assert "Traceback" not in api.log_text()


MALFORMED_URLS = [
    "postgresql://tasklog:hunter2-secret@[::1/tasklog",
    "postgresql://tasklog:hunter2-secret@127.0.0.1:5432/tasklog?sslmode=bogus",
    "postgresql://tasklog@[::1/tasklog?password=hunter2-secret",
    "host=[::1 password=hunter2-secret port=x",
]


def test_a_malformed_database_url_never_prints_its_password(tmp_path: Path) -> None:
    """`tasklog tasks`, `migrate` and `api` with malformed URLs: one line naming the variable,
    the password masked, no pool warning quoting it."""
    for url in MALFORMED_URLS:
        for command in (["tasks"], ["migrate"], ["api"]):
            result = tasklog_cli(
                *command,
                env={"TASKLOG_DATABASE_URL": url, "TASKLOG_API_DB_WAIT": "1"},
                timeout=60,
            )
            out = result.stdout + result.stderr
            assert result.returncode != 0, (command, url, out)
            assert "hunter2" not in out, (command, url, out)
            assert "TASKLOG_DATABASE_URL" in out, (command, url, out)
            assert "Traceback" not in out, (command, url, out)


def test_files_naming_pid_1_as_their_writer_are_finalized(
    procs: ProcessFactory, database_url: str, spool_dir: Path
) -> None:
    """200 files of a worker's user naming pid 1 (init, alive forever) as their writer: each is
    LOST once idle past TASKLOG_ORPHAN_TIMEOUT and leaves the spool, its line kept (before:
    never finalized; 60,000 of them grew the collector to 318 MB). A file naming a live
    process of its own user is left alone."""
    worker_uid = 65534 if os.geteuid() == 0 else os.geteuid()  # a user that does not run pid 1
    if os.geteuid() != 0 and os.stat("/proc/1").st_uid == worker_uid:
        pytest.skip("this user runs pid 1: no other user's process to name")
    collector(procs, database_url, spool_dir, TASKLOG_ORPHAN_TIMEOUT="1")
    forged = [f"forged-{i}" for i in range(200)]
    for task_id in forged:
        path = spool_dir / f"{task_id}.1.{time.time_ns()}{spool.SUFFIX}"
        path.write_bytes(start(task_id) + line(1, f"{task_id} 1"))
        if os.geteuid() == 0:
            os.chown(path, worker_uid, -1)
    mine = write(spool_dir, "running", start("running") + line(1, "running 1"))  # our own pid
    write(spool_dir, "good-0", good_task("good-0"))
    wait_for(lambda: stored(database_url, ["good-0"]), message="a good task stored")
    wait_for(
        lambda: (
            pg_rows(
                database_url,
                "SELECT count(*) FILTER (WHERE state = 'LOST'), sum(line_count) FROM tasks "
                "WHERE task_id = ANY(%s)",
                (forged,),
            )
            == [(200, 200)]
        ),
        timeout=60,
        message="the 200 forged files' tasks LOST with their line",
    )
    wait_for(
        lambda: not list(spool_dir.glob("forged-*")), message="the forged files leave the spool"
    )
    assert mine.exists()
    assert pg_rows(database_url, "SELECT state FROM tasks WHERE task_id = 'running'") == [
        ("STARTED",)
    ]


async def test_a_stream_slot_is_free_as_soon_as_its_client_leaves(
    procs: ProcessFactory, database_url: str, redis_url: str
) -> None:
    """One stream slot, heartbeats a minute apart: a client that opens a stream and leaves
    frees the slot at once (before: at the next heartbeat), ten times in a row."""
    api, base = start_api(
        procs,
        database_url,
        redis_url,
        TASKLOG_API_MAX_STREAMS="1",
        TASKLOG_API_SSE_HEARTBEAT="60",
    )
    url = f"{base}{PREFIX}/sse/tasks/"
    started = time.monotonic()
    for _ in range(10):
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as response:
                assert response.status == 200
                await response.content.readline()  # the stream is open
        # The client is gone (session closed): the next one gets the slot, without waiting
        # for a heartbeat (60 s), within a short deadline.
        deadline = time.monotonic() + 20
        while True:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{base}{PREFIX}/sse/test/?count=1&interval_ms=10") as r:
                    if r.status == 200:
                        await r.read()
                        break
                    assert r.status == 503
            assert time.monotonic() < deadline, "the slot was not freed"
            await asyncio.sleep(0.05)
    assert time.monotonic() - started < 60  # never a heartbeat's wait
    assert "Traceback" not in api.log_text()


async def test_links_to_ids_holding_a_slash_reach_their_task(
    procs: ProcessFactory, database_url: str, redis_url: str, spool_dir: Path
) -> None:
    """Tasks whose ids (and workflow root) hold `/` and `..`: every link the task list and
    search pages serve for them reaches that task's own page (before: `urlencode` kept `/`,
    and the links named other paths: 404s, or another task)."""
    collector(procs, database_url, spool_dir)
    ids = ["a/b", "../../tasklog/api/tasks/x", "c/./d/"]
    for n, task_id in enumerate(ids):
        data = start(task_id, root_id="root/one") + line(1, f"slash line {n}") + end()
        write(spool_dir, spool.safe_name(task_id), data)
    write(spool_dir, "good-0", good_task("good-0"))
    await until_true(lambda: stored(database_url, ["good-0"]), "a good task stored")
    await until_true(
        lambda: (
            pg_rows(database_url, "SELECT count(*) FROM tasks WHERE task_id = ANY(%s)", (ids,))
            == [(3,)]
        ),
        "the slashed tasks stored",
    )
    _, base = start_api(procs, database_url, redis_url)
    async with http() as session:
        pages = {}
        for page in ("/", "/search/?q=slash+line"):
            async with session.get(f"{base}{PREFIX}{page}") as response:
                assert response.status == 200
                pages[page] = await response.text()
        for page, html in pages.items():
            for task_id in ids:
                href = f"{PREFIX}/task/{quote(task_id, safe='')}/"
                assert f'href="{href}' in html, (page, task_id)
                async with session.get(base + href) as response:
                    assert response.status == 200, (page, task_id)
                    text = await response.text()
                    assert f'data-sse="{PREFIX}/sse/task/{quote(task_id, safe="")}/"' in text
        wf = f"{PREFIX}/workflow/{quote('root/one', safe='')}/"
        assert f'href="{wf}"' in pages["/"]
        async with session.get(base + wf) as response:
            assert response.status == 200
        async with session.get(f"{base}{PREFIX}/api/tasks/{quote(ids[0], safe='')}/") as r:
            assert (await r.json())["task_id"] == "a/b"


async def raw_get(base: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """A GET written by hand (a client library would refuse these Host values)."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(f"GET {path} HTTP/1.1\r\n{head}Connection: close\r\n\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


async def test_an_odd_host_header_with_a_valid_token_is_a_400(
    procs: ProcessFactory, database_url: str, redis_url: str, spool_dir: Path
) -> None:
    """Host values yarl cannot make a URL of (`a:b:c`, a port past 65535 or negative, a bare
    IPv6 address), with a valid token, on the list (which builds a `next` link), a page, search,
    health and a stream: a 400 naming the Host, never a 500 and a traceback."""
    token = "trust-token-0123456789abcdef"
    collector(procs, database_url, spool_dir)
    for i in range(3):
        write(spool_dir, f"good-{i}", good_task(f"good-{i}"))
    await until_true(lambda: stored(database_url, ["good-0", "good-1", "good-2"]), "stored")
    api, base = start_api(procs, database_url, redis_url, TASKLOG_API_TOKEN=token)
    bearer = {"Authorization": f"Bearer {token}"}
    paths = [
        "/api/tasks/?limit=1",
        "/",
        "/api/search/?q=good&limit=1",
        "/healthz",
        "/sse/test/?count=1",
    ]
    for host in ("a:b:c", "x:99999", "::1", "1.2.3.4:-1", "[::1]:80x"):
        for path in paths:
            status, body = await raw_get(base, PREFIX + path, {"Host": host, **bearer})
            assert status == 400, (host, path, body)
            assert b"is not a host name" in body, (host, path, body)
    # A normal Host still works, and the next link is there.
    status, body = await raw_get(base, f"{PREFIX}/api/tasks/?limit=1", {"Host": "h", **bearer})
    assert status == 200 and json.loads(body)["next"], body
    assert "Traceback" not in api.log_text()


# -- 5. identity -------------------------------------------------------------------------------


def task_row(url: str, task_id: str) -> dict[str, Any]:
    rows = pg_rows(url, "SELECT * FROM tasks WHERE task_id = %s", (task_id,), dicts=True)
    row: dict[str, Any] = rows[0]
    return row


def runs_of(url: str, task_id: str) -> list[dict[str, Any]]:
    return pg_rows(
        url,
        "SELECT run, retries, state, host, exc_type, exc_message, traceback, root_id "
        "FROM task_runs WHERE task_id = %s ORDER BY run",
        (task_id,),
        dicts=True,
    )


def test_a_file_speaks_only_for_its_own_task_and_runs_are_append_only(
    procs: ProcessFactory, database_url: str, spool_dir: Path
) -> None:
    """A task fails; then a file named for another task claims it, and a file named for it
    claims a new run of the same delivery ending SUCCESS: both are quarantined and the failure
    stands whole. A genuine retry (retries 1) then becomes the task's current state, and the
    failed run keeps its outcome, exception, traceback, host and root."""
    collector(procs, database_url, spool_dir)
    failed = (
        start("victim", host="host-a", root_id="root-1", retries=0)
        + line(1, "victim 1")
        + end(state="FAILURE", exc_type="ValueError", exc_message="boom", traceback="TB-1")
    )
    write(spool_dir, "victim", failed)
    wait_for(
        lambda: (
            pg_rows(database_url, "SELECT state FROM tasks WHERE task_id = 'victim'")
            == [("FAILURE",)]
        ),
        message="the victim's failure stored",
    )
    forged_success = start("victim", host="evil", root_id="evil-root", retries=0)
    forged_success += line(1, "forged") + end(state="SUCCESS")
    write(spool_dir, "someone-else", forged_success)  # a name that is not the victim's
    write(spool_dir, "victim", forged_success)  # the victim's name, the same delivery
    goods = [f"good-{i}" for i in range(4)]
    for task_id in goods:
        write(spool_dir, task_id, good_task(task_id))
    wait_for(lambda: stored(database_url, goods), message="the good tasks stored")
    quarantine = spool_dir / "quarantine"
    wait_for(
        lambda: len(list(quarantine.glob("*" + spool.SUFFIX))) == 2,
        message="both forged files quarantined",
    )
    victim = task_row(database_url, "victim")
    assert (victim["state"], victim["exc_type"], victim["exc_message"]) == (
        "FAILURE",
        "ValueError",
        "boom",
    )
    assert (victim["traceback"], victim["host"], victim["root_id"]) == ("TB-1", "host-a", "root-1")
    assert pg_rows(
        database_url, "SELECT seq, message FROM lines WHERE task_id = 'victim' ORDER BY seq"
    ) == [(1, "victim 1")]

    retry = start("victim", host="host-b", root_id="root-1", retries=1) + line(1, "retry 1")
    write(spool_dir, "victim", retry + end(state="SUCCESS"))
    wait_for(
        lambda: (
            pg_rows(database_url, "SELECT state FROM tasks WHERE task_id = 'victim'")
            == [("SUCCESS",)]
        ),
        message="the genuine retry is the task's current state",
    )
    runs = runs_of(database_url, "victim")
    assert [(r["run"], r["retries"], r["state"], r["host"]) for r in runs] == [
        (0, 0, "FAILURE", "host-a"),
        (1, 1, "SUCCESS", "host-b"),
    ]
    first = runs[0]
    assert (first["exc_type"], first["exc_message"], first["traceback"], first["root_id"]) == (
        "ValueError",
        "boom",
        "TB-1",
        "root-1",
    )
    assert pg_rows(
        database_url, "SELECT seq, message FROM lines WHERE task_id = 'victim' ORDER BY seq"
    ) == [(1, "victim 1"), (2, "retry 1")]
    wait_for(
        lambda: stats(database_url).get("quarantined") == 2,
        message="both quarantined files counted in the heartbeat's stats",
    )


# -- 6. the live path --------------------------------------------------------------------------


async def test_forged_redis_messages_never_reach_a_stream_nor_end_it(
    procs: ProcessFactory, database_url: str, redis_url: str, spool_dir: Path
) -> None:
    """While a task runs and a viewer follows it, a real Redis client publishes on tasklog's
    channels: a lines message whose line is `1`, lines of another task, garbage, and a
    finished status for the running task. The viewer gets none of it: every real line once, in
    order, and `end` only after Postgres has the task's real end. One warning in the API log."""
    collector(procs, database_url, spool_dir, TASKLOG_REDIS_URL=redis_url)
    running = write(spool_dir, "live", start("live") + line(1, "live 1") + line(2, "live 2"))
    await until_true(
        lambda: (
            pg_rows(database_url, "SELECT last_seq FROM tasks WHERE task_id = 'live'") == [(2,)]
        ),
        "the running task's first lines",
    )
    api, base = start_api(procs, database_url, redis_url)
    forger = redis.asyncio.Redis.from_url(redis_url)
    try:
        async with http() as session, follow(session, base, "live") as viewer:
            events = await viewer.until(lambda e: e.type == "new_log" and e.id == "2")
            await until_true(
                lambda: asyncio.run(_numsub(redis_url, "tasklog:lines:live")) > 0,
                "the API subscribed the task's channel",
            )
            forged = [
                ("tasklog:lines:live", b'{"task_id": "live", "lines": [1]}'),
                ("tasklog:lines:live", b'{"task_id": "other", "lines": []}'),
                ("tasklog:lines:live", b"not json at all"),
                (
                    "tasklog:lines:live",
                    json.dumps(
                        {
                            "task_id": "live",
                            "lines": [
                                {"seq": 3, "ts": "x", "stream": "stdout", "message": "fake"},
                                {"seq": True, "ts": "x", "stream": "stdout", "message": "f"},
                            ],
                        }
                    ).encode(),
                ),
                (
                    "tasklog:tasks",
                    json.dumps(
                        {"task_id": "live", "status": "SUCCESS", "last_seq": 2, "line_count": 2}
                    ).encode(),
                ),
                ("tasklog:tasks", b'{"task_id": "live", "status": "SUCCESS", "progress": "x"}'),
            ]
            for channel, data in forged:
                await forger.publish(channel, data)
            # The collector's own news still flows: the task's next line, then its end.
            with running.open("ab") as f:
                f.write(line(3, "live 3"))
            events += await viewer.until(lambda e: e.type == "new_log" and e.id == "3")
            assert not [e for e in events if e.type == "end"], "ended by a forged status"
            assert [e.data.get("message") for e in events if e.type == "new_log"] == [
                "live 1",
                "live 2",
                "live 3",
            ]
            with running.open("ab") as f:
                f.write(end())
            rest = await viewer.until(lambda e: e.type == "end")
            state = pg_rows(database_url, "SELECT state FROM tasks WHERE task_id = 'live'")
            assert state == [("SUCCESS",)]
            assert not [e for e in rest if e.type == "new_log"]
    finally:
        await forger.aclose()
    warnings = [entry for entry in api.log_text().splitlines() if "dropped" in entry]
    assert len(warnings) == 1, warnings
    assert "fake" not in api.log_text()
    assert "Traceback" not in api.log_text()


async def _numsub(redis_url: str, channel: str) -> int:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        (_, count), *_ = await client.pubsub_numsub(channel)
        return int(count)
    finally:
        await client.aclose()


ACL_FILE = REPO_ROOT / "deploy" / "redis-users.acl"


async def test_the_brokers_redis_user_cannot_publish_on_tasklogs_channels(
    procs: ProcessFactory, database_url: str, spool_dir: Path, tmp_path: Path
) -> None:
    """One real Redis 7 with deploy/redis-users.acl, broker and live path together: a Celery
    worker runs on the broker's user, the collector and the API on tasklog's, and a viewer gets
    a task's lines through Redis; the broker's credentials cannot publish (or subscribe) on
    tasklog's channels, tasklog's cannot touch Celery's queues."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("no redis-server binary (apt-get install redis-server)")
    port = free_port()
    acl = tmp_path / "users.acl"
    acl.write_text(ACL_FILE.read_text())
    procs.start(
        "redis-acl",
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--aclfile", str(acl)],
        ready="Ready to accept connections",
    )
    broker = f"redis://celery:change-me-too@127.0.0.1:{port}/0"
    tasklog = f"redis://tasklog:change-me@127.0.0.1:{port}/0"

    as_broker = redis.asyncio.Redis.from_url(broker)
    as_tasklog = redis.asyncio.Redis.from_url(tasklog)
    try:
        for channel in ("tasklog:tasks", "tasklog:lines:any-task"):
            with pytest.raises(redis.exceptions.NoPermissionError):
                await as_broker.publish(channel, b'{"task_id": "x", "status": "SUCCESS"}')
            with pytest.raises(redis.exceptions.NoPermissionError):
                await as_broker.execute_command("SUBSCRIBE", channel)  # type: ignore[no-untyped-call]
        with pytest.raises(redis.exceptions.NoPermissionError):
            await as_tasklog.lpush("celery", b"forged task message")
        with pytest.raises(redis.exceptions.NoPermissionError):
            await as_tasklog.publish("/0.celery.pidbox", b"x")
        anonymous = redis.asyncio.Redis(host="127.0.0.1", port=port)
        with pytest.raises(redis.exceptions.AuthenticationError):
            await anonymous.ping()
        await anonymous.aclose()
    finally:
        await as_broker.aclose()
        await as_tasklog.aclose()

    # The real thing on those users: a worker, its collector, the API, a viewer.
    procs.collector(
        database_url=database_url,
        spool_dir=spool_dir,
        redis_url=tasklog,
        ready="following",
        env=QUICK,
    )
    procs.worker(redis_url=broker, spool_dir=spool_dir, pool="solo", concurrency=1)
    api, base = start_api(procs, database_url, tasklog)
    app = Celery(broker=broker, backend=broker)
    try:
        async with http() as session:
            result = app.send_task("demo.print_lines", args=(200,), kwargs={"text": "acl"})
            seen: list[int] = []
            async with follow(session, base, result.id) as viewer:
                events = await viewer.until(lambda e: e.type == "end", timeout=90)
                seen = [int(e.id) for e in events if e.type == "new_log" and e.id]
            assert await asyncio.to_thread(result.get, timeout=60) == 200
            assert seen == list(range(1, 201))
            assert (
                await metric(session, base, 'tasklog_api_redis_messages_total{channel="tasks"}') > 0
            )
    finally:
        app.close()
    assert "NOPERM" not in api.log_text()


# -- 7. fairness -------------------------------------------------------------------------------


def backlog_counts(url: str, ids: list[str]) -> dict[str, int]:
    rows = pg_rows(
        url, "SELECT task_id, count(*) FROM lines WHERE task_id = ANY(%s) GROUP BY 1", (ids,)
    )
    return {task_id: int(n) for task_id, n in rows}


def test_a_new_task_is_stored_while_big_backlogs_drain_and_names_buy_nothing(
    procs: ProcessFactory, database_url: str, spool_dir: Path
) -> None:
    """Three 100,000-line backlogs (one named with ns=0, which used to go first, whole) are
    drained side by side; a task written meanwhile is stored while they still drain; every
    line of all of them stored once."""
    lines = 100_000
    ids = write_backlog(spool_dir, tasks=3, lines=lines, prefix="backlog")
    first = next(spool_dir.glob("backlog-2.*"))
    stem, pid, _, suffix = first.name.split(".", 3)
    first.rename(spool_dir / f"{stem}.{pid}.0.{suffix}")  # the name that bought priority
    collector(procs, database_url, spool_dir, TASKLOG_BATCH_LINES="3000")
    wait_for(
        lambda: sum(backlog_counts(database_url, ids).values()) > 0,
        timeout=60,
        message="the backlogs begin to drain",
    )
    written = time.monotonic()
    write(spool_dir, "newcomer", good_task("newcomer"))
    wait_for(lambda: stored(database_url, ["newcomer"]), timeout=60, message="the new task")
    waited = time.monotonic() - written
    counts = backlog_counts(database_url, ids)
    print(f"\nnew task stored {waited:.2f}s after it was written; backlogs then: {counts}")
    # Stored while the backlogs still drained, and they drained side by side: none of them,
    # the ns=0 one included, went first alone.
    assert sum(counts.values()) < 3 * lines
    assert all(counts.get(task_id, 0) > 0 for task_id in ids), counts
    assert max(counts.values()) < lines, counts
    wait_for(
        lambda: backlog_counts(database_url, ids) == dict.fromkeys(ids, lines),
        timeout=180,
        message="every backlog line stored",
    )
    per_task = pg_rows(
        database_url,
        "SELECT task_id, count(DISTINCT seq), min(seq), max(seq) FROM lines "
        "WHERE task_id = ANY(%s) GROUP BY 1 ORDER BY 1",
        (ids,),
    )
    assert per_task == [(task_id, lines, 1, lines) for task_id in sorted(ids)]


# -- 8. the demo's servers ---------------------------------------------------------------------

OTHER_UID = 61010  # no such user needed: a uid that is neither root nor the demo's


def _as_other_user(code: str) -> subprocess.CompletedProcess[str]:
    """`code` run by the system's Python (the test's may sit under root's home) as another
    uid: the standard library alone, speaking each server's protocol by hand."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 that another user can run")
    return subprocess.run(
        [python, "-c", code],
        user=OTHER_UID,
        group=OTHER_UID,
        extra_groups=[],
        env={"HOME": "/tmp", "PATH": "/usr/bin:/bin"},
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


#: A Postgres StartupMessage for user postgres, then what the server asks: AuthenticationOk
#: (code 0) means it let us in without a password; 10 (SASL) or 5 (md5) asks for one.
PG_PROBE = r"""
import socket, struct, sys
def ask(sock):
    body = b"user\0postgres\0database\0postgres\0\0"
    sock.sendall(struct.pack("!ii", 8 + len(body), 196608) + body)
    kind, length = sock.recv(1), struct.unpack("!i", sock.recv(4))[0]
    payload = sock.recv(length - 4)
    print(kind.decode(), struct.unpack("!i", payload[:4])[0] if kind == b"R" else payload)
"""


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="acting as a second user needs root")
def test_the_demos_servers_refuse_other_local_users(
    procs: ProcessFactory, pg_state_dir: Path
) -> None:
    """`tasklog demo` with its embedded servers: another local user gets nothing from its
    Postgres (TCP without the password, the Unix socket) nor from its Redis, while the demo's
    own components work (its worker, collector and API store and serve a task)."""
    state = pg_state_dir
    demo = procs.start(
        "demo",
        [sys.executable, "-m", "tasklog", "demo", "--state-dir", str(state)],
        env={"HOME": os.environ.get("HOME", "/root"), "TASKLOG_API_PORT": str(free_port())},
        ready="running; press Ctrl-C",
        timeout=180,
    )
    assert "Quick task done" in demo.log_text()  # the demo's own components got through
    pidfile = (state / "postgres" / "pgdata" / "postmaster.pid").read_text().splitlines()
    pg_port, socket_dir = int(pidfile[3]), Path(pidfile[4])
    redis_log = (state / "redis" / "redis.log").read_text()
    redis_port = int(redis_log.rsplit("port=", 1)[1].split(".", 1)[0].split()[0].rstrip(","))
    for secret in ("postgres", "redis"):
        st = (state / "secrets" / secret).stat()
        assert stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE((state / "secrets").stat().st_mode) == 0o700

    tcp = _as_other_user(
        PG_PROBE + f"ask(socket.create_connection(('127.0.0.1', {pg_port}), timeout=10))"
    )
    assert tcp.returncode == 0, tcp.stderr
    assert tcp.stdout.split() == ["R", "10"], tcp.stdout  # SASL: a password is asked for
    unix = _as_other_user(
        PG_PROBE + "s = socket.socket(socket.AF_UNIX)\n"
        f"s.connect('{socket_dir}/.s.PGSQL.{pg_port}')\nask(s)"
    )
    assert unix.returncode != 0 and "PermissionError" in unix.stderr, unix.stderr
    assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700
    rd = _as_other_user(
        "import socket\n"
        f"s = socket.create_connection(('127.0.0.1', {redis_port}), timeout=10)\n"
        "s.sendall(b'CONFIG SET dir /tmp\\r\\nPING\\r\\n')\n"
        "got = b''\n"
        "while got.count(b'\\r\\n') < 2:\n"
        "    got += s.recv(4096)\n"
        "print(got.decode())"
    )
    assert rd.returncode == 0, rd.stderr
    assert rd.stdout.count("-NOAUTH") == 2, rd.stdout
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    secret = (state / "secrets" / "redis").read_text().strip()
    assert secret not in ps.stdout  # the password on no command line
    demo.send_signal(signal.SIGINT)
    assert demo.wait(60) == 0
