"""Search across every stored line: the API and `tasklog grep`, over tasks a real worker ran and
the real collector stored."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO_ROOT, ProcessFactory, pg_rows, wait_for
from tests.integration.api_support import PREFIX, api_settings, running_api
from tests.integration.test_api_e2e import start_pipeline

pytestmark = pytest.mark.asyncio(loop_scope="session")

MARKER = "needle-7f3a9c"
NOISE_TASKS = 30


def tasklog(
    database_url: str, *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKLOG_")}
    env = {**clean, **(env or {}), "TASKLOG_DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "tasklog", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
    )


async def run_tasks(database_url: str, celery_client: Any) -> tuple[str, list[str]]:
    """Dozens of tasks printing numbered lines, and one printing the marker among others."""
    noise = [
        celery_client.send_task(
            "demo.print_lines", kwargs={"count": 12, "stderr_every": 4, "text": f"line of t{i}"}
        ).id
        for i in range(NOISE_TASKS)
    ]
    marked = celery_client.send_task(
        "demo.print_text", args=(f"before\nthe {MARKER.upper()} is here\nafter\n",)
    ).id
    ids = [*noise, marked]
    await asyncio.to_thread(
        wait_for,
        lambda: (
            pg_rows(
                database_url,
                "SELECT count(*) FROM tasks WHERE task_id = ANY(%s) AND state = 'SUCCESS'",
                (ids,),
            )[0][0]
            == len(ids)
        ),
        90,
        0.1,
        "every task stored",
    )
    return marked, noise


async def test_search_api_and_grep(
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
) -> None:
    start_pipeline(procs, database_url, redis_url, redis_url, spool_dir)
    marked, noise = await run_tasks(database_url, celery_client)
    async with running_api(api_settings(database_url, redis_url)) as client:

        async def get(query: str, status: int = 200) -> Any:
            response = await client.get(f"{PREFIX}/api/search/?{query}")
            assert response.status == status, await response.text()
            return await response.json()

        # A marker printed by one task among dozens: that line, and nothing else.
        body = await get(f"q={MARKER}")
        assert body["next"] is None
        [hit] = body["results"]
        assert hit["task_id"] == marked and hit["task_name"] == "demo.print_text"
        assert hit["message"] == f"the {MARKER.upper()} is here"
        assert hit["seq"] == 2 and hit["stream"] == "stdout"
        start, end = hit["match"]
        assert hit["message"][start:end] == MARKER.upper()

        # A common phrase, page after page through `next`: every match once, newest first.
        expected = pg_rows(
            database_url,
            "SELECT task_id, seq FROM lines WHERE message ILIKE '%line of%'"
            " ORDER BY ts DESC, task_id DESC, seq DESC",
        )
        assert len(expected) == NOISE_TASKS * 12
        seen: list[tuple[str, int]] = []
        url: str | None = str(client.make_url(f"{PREFIX}/api/search/?q=LINE+OF&limit=50"))
        pages = 0
        while url:
            page = await (await client.session.get(url)).json()
            assert len(page["results"]) <= 50
            seen += [(m["task_id"], m["seq"]) for m in page["results"]]
            url = page["next"]
            pages += 1
        assert seen == [tuple(r) for r in expected]
        assert pages == 8

        # LIKE's wildcards are text: "%" finds nothing here, "_" neither.
        assert (await get("q=%25"))["results"] == []
        assert (await get("q=line_of"))["results"] == []

        # Regex, and the filters.
        body = await get("q=^line of t1[0-9]? 1[0-2]$&regex=1&limit=500")
        found = {(m["task_id"], m["message"]) for m in body["results"]}
        tasks_1x = {noise[1], *noise[10:20]}
        assert {t for t, _ in found} == tasks_1x
        assert len(found) == len(tasks_1x) * 3
        stderr = await get("q=line of t3 &stream=stderr")
        assert [m["message"] for m in stderr["results"]] == [
            "line of t3 12",
            "line of t3 8",
            "line of t3 4",
        ]
        assert all(m["stream"] == "stderr" for m in stderr["results"])
        assert (await get(f"q={MARKER}&name=demo.print_lines"))["results"] == []
        assert len((await get(f"q={MARKER}&name=demo.print_text&state=SUCCESS"))["results"]) == 1
        assert (await get(f"q={MARKER}&state=FAILURE"))["results"] == []
        assert (await get(f"q={MARKER}&since=2999-01-01T00:00:00Z"))["results"] == []
        assert (await get(f"q={MARKER}&until=2000-01-01T00:00:00Z"))["results"] == []

        # Bad input: 400 with one line saying what is wrong.
        for query, words in [
            ("q=(unclosed&regex=1", "parentheses"),
            ("q=a{3,1}&regex=1", "invalid"),
            ("q=", "q:"),
            ("q=x&stream=video", "stream:"),
            ("q=x&cursor=nonsense", "cursor:"),
            ("q=x&limit=0", "limit:"),
            ("q=x&since=yesterday", "since:"),
        ]:
            error = (await get(query, 400))["error"]
            assert words in error and "\n" not in error, (query, error)

    # The terminal: the same single match, as text and as JSON; exit 1 when nothing matches.
    out = await asyncio.to_thread(tasklog, database_url, "grep", MARKER)
    lines = out.stdout.splitlines()
    assert len(lines) == 1 and marked in lines[0] and f"the {MARKER.upper()} is here" in lines[0]
    out = await asyncio.to_thread(tasklog, database_url, "grep", MARKER, "--json")
    [obj] = [json.loads(line) for line in out.stdout.splitlines()]
    assert obj == {**hit}
    out = await asyncio.to_thread(
        tasklog, database_url, "grep", "-E", "^line of t3 [0-9]+$", "--stream", "stderr", "--json"
    )
    assert [json.loads(x)["message"] for x in out.stdout.splitlines()] == [
        "line of t3 12",
        "line of t3 8",
        "line of t3 4",
    ]
    out = await asyncio.to_thread(tasklog, database_url, "grep", "no such text", check=False)
    assert out.returncode == 1 and out.stdout == ""
    out = await asyncio.to_thread(tasklog, database_url, "grep", "-E", "(", check=False)
    assert out.returncode == 2 and out.stderr.startswith("tasklog: bad pattern:")
    assert len(out.stderr.splitlines()) == 1


async def test_closed_days_get_their_index_and_search_off_drops_them(
    database_url: str, redis_url: str
) -> None:
    """The open day is never indexed (ingest stays fast); a day that is over gets its trigram
    index from `tasklog index` (and `migrate`, `prune`); TASKLOG_SEARCH=false drops them."""
    days = pg_rows(
        database_url,
        "SELECT (now() AT TIME ZONE 'UTC')::date - 3, (now() AT TIME ZONE 'UTC')::date",
    )[0]
    past, today = (f"lines_{d:%Y%m%d}" for d in days)
    for name, day in ((past, days[0]), (today, days[1])):
        pg_rows(
            database_url,
            f'CREATE TABLE IF NOT EXISTS "{name}" PARTITION OF lines'
            f" FOR VALUES FROM ('{day} 00:00:00+00') TO ('{day} 00:00:00+00'::timestamptz"
            " + interval '1 day')",
        )
    pg_rows(
        database_url,
        "INSERT INTO tasks (task_id, task_name, state) VALUES ('old', 'demo.old', 'SUCCESS');"
        "INSERT INTO lines (task_id, seq, ts, stream, message) VALUES"
        f" ('old', 1, '{days[0]} 12:00:00+00', 'stdout', 'an old {MARKER} line'),"
        " ('old', 2, now(), 'stdout', 'a fresh line')",
    )

    def trigram_indexes() -> list[tuple[str, bool]]:
        return [
            (r[0], r[1])
            for r in pg_rows(
                database_url,
                "SELECT c.relname, i.indisvalid FROM pg_index i"
                " JOIN pg_class c ON c.oid = i.indexrelid"
                " WHERE c.relname LIKE 'lines%%trgm' OR c.relname = 'lines_ts' ORDER BY 1",
            )
        ]

    assert trigram_indexes() == [("lines_ts", True)], "the migration indexes no day"
    out = await asyncio.to_thread(tasklog, database_url, "index")
    assert out.stdout.strip() == (
        "search index: 1 closed days indexed (1 built now), today's lines scanned"
    )
    assert trigram_indexes() == [(f"{past}_message_trgm", True), ("lines_ts", True)]
    again = await asyncio.to_thread(tasklog, database_url, "index")
    assert "(0 built now)" in again.stdout
    async with running_api(api_settings(database_url, redis_url)) as client:
        found = await (await client.get(f"{PREFIX}/api/search/?q={MARKER}")).json()
        assert [m["seq"] for m in found["results"]] == [1]

        env_off = {"TASKLOG_SEARCH": "false"}
        off = await asyncio.to_thread(tasklog, database_url, "index", env=env_off)
        assert "search indexes off" in off.stdout
        assert trigram_indexes() == []
        found = await (await client.get(f"{PREFIX}/api/search/?q={MARKER}")).json()
        assert [m["seq"] for m in found["results"]] == [1], "without the index: a scan"
    out = await asyncio.to_thread(tasklog, database_url, "migrate")
    assert "schema is up to date" in out.stdout and "1 closed days indexed" in out.stdout


def _day_index(database_url: str) -> list[tuple[str, bool]]:
    rows = pg_rows(
        database_url,
        "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE c.relname LIKE 'lines%%message_trgm' ORDER BY 1",
    )
    return [(r[0], r[1]) for r in rows]


async def test_the_collector_keeps_the_day_indexes_itself(
    procs: ProcessFactory, database_url: str, spool_dir: Path
) -> None:
    """No timer needed: a collector indexes a day once it is over, in a thread of its own while
    it stores; with TASKLOG_SEARCH=false it drops them. One session builds at a time."""
    from capture_shim import spool

    yesterday = pg_rows(database_url, "SELECT (now() AT TIME ZONE 'UTC')::date - 1")[0][0]
    noon = f"SELECT extract(epoch FROM '{yesterday} 12:00Z'::timestamptz)"
    stamp = float(pg_rows(database_url, noon)[0][0])
    start = {"k": spool.START, "v": 1, "t": stamp, "task_id": "late", "name": "demo.late"}
    start |= {"host": "h", "pid": os.getpid(), "max_lines": 1000}
    record = json.loads(spool.encode_line(1, spool.STDOUT, f"yesterday's {MARKER}"))
    record["t"] = stamp
    end = {"k": spool.END, "t": stamp, "state": "SUCCESS", "runtime": 0.1, "lines": 1}
    data = spool.encode(start) + (json.dumps(record) + "\n").encode() + spool.encode(end)
    (spool_dir / spool.file_name("late", os.getpid(), 1)).write_bytes(data)
    index = f"lines_{yesterday:%Y%m%d}_message_trgm"

    collector = procs.collector(database_url=database_url, spool_dir=spool_dir, ready="following")
    wait_for(
        lambda: _day_index(database_url) == [(index, True)],
        timeout=60,
        message="yesterday's index built by the collector",
    )
    # A second session (`tasklog index`) builds nothing twice: done, or busy with it still.
    again = tasklog(database_url, "index").stdout
    assert "(0 built now)" in again or "another session is building" in again
    collector.terminate()

    procs.collector(
        database_url=database_url,
        spool_dir=spool_dir,
        env={"TASKLOG_SEARCH": "false"},
        ready="following",
    )
    wait_for(lambda: _day_index(database_url) == [], timeout=60, message="dropped")
