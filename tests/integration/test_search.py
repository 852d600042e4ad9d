"""Search across every stored line: the API and `tasklog grep`, over tasks a real worker ran and
the real collector stored."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
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
    """A day that is over gets its trigram index from `tasklog index` (and `migrate`, the
    collector); TASKLOG_SEARCH=false drops them."""
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
    assert out.stdout.startswith("search index: 1 closed days indexed (1 built now); today")
    # Today's one line is in the hour under way: no slice of today covers it yet (or, if
    # a slice just ended, the one that does), the old day has its index.
    built = trigram_indexes()
    assert [i for i in built if not i[0].startswith(today)] == [
        (f"{past}_message_trgm", True),
        ("lines_ts", True),
    ]
    assert len(built) <= 3
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


async def test_the_open_day_is_indexed_in_slices(database_url: str, redis_url: str) -> None:
    """Today's lines get trigram indexes as the day goes (each hour once over, the hour under way
    in two-minute slices), a search window inside a slice uses its index, a line stored late
    is found through the index already built, and lines on either side of an hour's or the
    day's boundary are found once each."""
    import psycopg

    from api.lookups import Search
    from collector import searchindex
    from tasklog.core import trigram

    today = pg_rows(database_url, "SELECT (now() AT TIME ZONE 'UTC')::date")[0][0]
    yesterday = today - timedelta(days=1)
    d = f"{today:%Y%m%d}"
    for day in (yesterday, today):
        pg_rows(
            database_url,
            f"CREATE TABLE lines_{day:%Y%m%d} PARTITION OF lines FOR VALUES FROM"
            f" ('{day} 00:00+00') TO ('{day + timedelta(days=1)} 00:00+00')",
        )
    # 30,000 ordinary lines over today's first 13 hours, so that the planner sees a real table.
    pg_rows(
        database_url,
        "INSERT INTO tasks (task_id, task_name, state) VALUES ('noise', 'demo.n', 'SUCCESS'),"
        " ('marked', 'demo.m', 'SUCCESS')",
    )
    pg_rows(
        database_url,
        "INSERT INTO lines (task_id, seq, ts, stream, message)"
        " SELECT 'noise', i, %s::timestamptz + i * interval '1.5 s', 'stdout',"
        "        'processing item ' || i || ' ' || md5(i::text)"
        " FROM generate_series(1, 30000) AS i",
        (f"{today} 00:00:00+00",),
    )
    planted = {
        "needle-hour": f"{today} 03:15:00+00",
        "needle-slice": f"{today} 12:02:00+00",
        "needle-tail": f"{today} 12:06:00+00",
        "edge-before": f"{today} 03:59:59.999999+00",
        "edge-after": f"{today} 04:00:00+00",
        "edge-yesterday": f"{yesterday} 23:59:59.999999+00",
        "edge-midnight": f"{today} 00:00:00+00",
    }

    def plant(seq: int, marker: str, ts: str) -> None:
        pg_rows(
            database_url,
            "INSERT INTO lines (task_id, seq, ts, stream, message)"
            " VALUES ('marked', %s, %s, 'stdout', %s)",
            (seq, ts, f"the {marker} line of {MARKER}"),
        )

    for seq, (marker, ts) in enumerate(planted.items(), 1):
        plant(seq, marker, ts)
    pg_rows(database_url, "ANALYZE lines")

    def slices() -> list[str]:
        rows = pg_rows(
            database_url,
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE i.indisvalid AND right(c.relname, 5) = '_trgm' ORDER BY 1",
        )
        return [r[0] for r in rows]

    clock = datetime.fromisoformat(f"{today}T12:07:30+00:00")
    said = await asyncio.to_thread(searchindex.apply, database_url, True, clock)
    assert "today indexed up to 12:06 UTC in 13 slices (13 built now)" in said
    hours = [f"lines_{d}_{h:02d}00_{h + 1:02d}00_trgm" for h in range(12)]
    assert slices() == [
        f"lines_{yesterday:%Y%m%d}_message_trgm",
        *hours,
        f"lines_{d}_1200_1206_trgm",
    ]

    # Stored after its hour's index was built: found through that index all the same.
    plant(100, "needle-late", f"{today} 03:30:00+00")
    planted["needle-late"] = f"{today} 03:30:00+00"

    def window_of(moment: datetime) -> tuple[datetime | None, datetime | None]:
        windows = Search("x").windows(clock, slices())
        # Contiguous, newest first, no overlap: every line is looked at once.
        assert windows[0] == (clock, None)
        for (low, _), (_, high) in itertools.pairwise(windows):
            assert low == high
        [window] = [
            w
            for w in windows
            if (w[0] is None or w[0] <= moment) and (w[1] is None or moment < w[1])
        ]
        return window

    def plan(marker: str, ts: str) -> str:
        low, high = window_of(datetime.fromisoformat(ts.replace("+00", "+00:00")))
        query, values = Search(marker).statement(low, high, 51)
        with psycopg.connect(database_url) as conn:
            rows = conn.execute(b"EXPLAIN " + query.as_bytes(conn), values).fetchall()
        return "\n".join(r[0] for r in rows)

    assert f"lines_{d}_0300_0400_trgm" in plan("needle-late", planted["needle-late"])
    assert f"lines_{d}_0300_0400_trgm" in plan("edge-before", planted["edge-before"])
    assert f"lines_{d}_0400_0500_trgm" in plan("edge-after", planted["edge-after"])
    # (200 lines: Postgres may as well read them by time; the window is the slice's.)
    assert window_of(datetime.fromisoformat(f"{today}T12:02:00+00:00")) == (
        datetime.fromisoformat(f"{today}T12:00:00+00:00"),
        datetime.fromisoformat(f"{today}T12:06:00+00:00"),
    )
    assert "_trgm" not in plan("needle-tail", planted["needle-tail"]), "the newest minutes: scanned"

    async with running_api(api_settings(database_url, redis_url)) as client:
        for marker, ts in planted.items():
            body = await (await client.get(f"{PREFIX}/api/search/?q={marker}")).json()
            assert [datetime.fromisoformat(m["timestamp"]) for m in body["results"]] == [
                datetime.fromisoformat(ts.replace("+00", "+00:00"))
            ], marker
        every = await (await client.get(f"{PREFIX}/api/search/?q={MARKER}&limit=500")).json()
        assert sorted(m["message"].split()[1] for m in every["results"]) == sorted(planted)

    # The hour is over: it gets its own index, and its two-minute slice goes.
    later = datetime.fromisoformat(f"{today}T13:00:40+00:00")
    said = await asyncio.to_thread(searchindex.apply, database_url, True, later)
    assert "today indexed up to 13:00 UTC in 13 slices (1 built now)" in said
    assert f"lines_{d}_1200_1300_trgm" in slices()
    assert f"lines_{d}_1200_1206_trgm" not in slices()
    assert trigram.parse(f"lines_{d}_1200_1300_trgm") == trigram.Slice(
        datetime.fromisoformat(f"{today}T12:00:00+00:00"),
        datetime.fromisoformat(f"{today}T13:00:00+00:00"),
    )


async def test_paging_through_lines_printed_in_one_microsecond_finds_each_once(
    database_url: str, redis_url: str
) -> None:
    """A fast task prints several lines within one microsecond: they share a timestamp, and a
    page may end among them. Every one is still found, once, by following `next`."""
    ts = datetime.now(UTC) - timedelta(minutes=1)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("CREATE TABLE IF NOT EXISTS lines_same_us PARTITION OF lines DEFAULT")
        await conn.execute(
            "INSERT INTO tasks (task_id, task_name, state, created_at, updated_at)"
            " VALUES ('burst-1', 'demo.burst', 'SUCCESS', %s, %s)",
            (ts, ts),
        )
        async with conn.cursor().copy(
            "COPY lines (task_id, seq, ts, stream, level, message) FROM STDIN"
        ) as copy:
            for seq in range(1, 8):
                await copy.write_row(("burst-1", seq, ts, "stdout", None, f"burst {seq}"))
    async with running_api(api_settings(database_url, redis_url)) as client:
        seqs: list[int] = []
        url: str | None = str(client.make_url(f"{PREFIX}/api/search/?q=burst&limit=3"))
        while url:
            page = await (await client.session.get(url)).json()
            seqs += [m["seq"] for m in page["results"]]
            url = page["next"]
    assert seqs == [7, 6, 5, 4, 3, 2, 1]
