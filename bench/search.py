"""Benchmark 6: search over 10M lines, and what the search indexes cost the collector.

Latency: the database of ``bench api`` (1M tasks, 10M lines in 31 day partitions, cached as
``tasklog_bench_10m``) with the search indexes of `collector.searchindex` (a trigram index per
closed day, the lines' time order; today's partition is scanned), plus rare markers planted
once in random tasks' lines. ``python -m tasklog api`` serves it and this process times
sequential ``GET /tasklog/api/search/`` first pages: a rare marker, a common word, a regex
matching a tenth of the lines, a regex matching one marker. The alternative measured in the
same run is the same search SQL with index scans switched off (what search costs without the
indexes), a few runs only: it scans every line.

Ingest: the collector over the same spool into fresh databases with search on and off
(``TASKLOG_SEARCH``: on, the open day carries the time index but no trigram index),
alternating, with raw ``psql \\copy`` into both as the practical limit.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import secrets
import time
import urllib.parse
from datetime import timedelta
from pathlib import Path

from psycopg import sql

from api.lookups import Q, Search
from bench import api_latency
from bench.collector import collect_once, copy_rows, fill_spool, psql_copy
from bench.common import (
    Child,
    Databases,
    Figure,
    children,
    percentile,
    python,
    row,
    scalar,
    title,
    verdict,
    wait_for,
    with_database,
    workdir,
)
from tasklog.core import trigram

TARGET_RARE_P99_MS = 300.0

_LINE_ROWS = """
    INSERT INTO lines (task_id, seq, ts, stream, level, message)
    SELECT md5(((i + {offset}) / 100)::text)::uuid::text, (i + {offset}) %% 100 + 1,
           {low} + (i::float8 / ({n})) * {span},
           CASE WHEN i %% 17 = 0 THEN 'stderr' ELSE 'stdout' END,
           CASE WHEN i %% 17 = 0 THEN 'WARNING' END,
           '[' || lpad((i %% 100)::text, 5, '0') || '] ' ||
           left('processing batch item ' || i || ' of 100: user order invoice '
                || md5(i::text) || ' retry connection timeout ok done records rows elapsed '
                || (i * 7 %% 1000) || ' ms cache hit upload chunk payload request response',
                40 + (i * 37 %% 160))
    FROM generate_series(0, ({n}) - 1) AS i
"""
TARGET_COPY_RATIO = 0.5
TARGET_ON_OFF = 0.8
MARKERS = 20


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--today-lines", type=int, default=10_000_000, help="lines of the open day (today)"
    )
    p.add_argument(
        "--past-lines", type=int, default=50_000, help="lines of each of the 29 closed days"
    )
    p.add_argument(
        "--tail-minutes",
        type=float,
        default=2.5,
        help="minutes of lines not indexed yet (a slice and a build's lag), at --today-lines a day",
    )
    p.add_argument("--rebuild", action="store_true", help="make the open-day database again")
    p.add_argument("--open-db", default="tl_bench_search", help="the open-day database's name")
    p.add_argument("--skip-open-day", action="store_true", help="not the open-day search")
    p.add_argument("--skip-30m", action="store_true", help="not the 31-day database of bench api")
    p.add_argument("--requests", type=int, default=100, help="timed searches per kind per run")
    p.add_argument("--runs", type=int, default=3, help="latency runs (each times every kind)")
    p.add_argument("--scan-runs", type=int, default=3, help="searches without the index")
    p.add_argument("--lines", type=int, default=500_000, help="lines in the ingest spool")
    p.add_argument("--files", type=int, default=500, help="spool files (tasks) for ingest")
    p.add_argument("--ingest-runs", type=int, default=2, help="ingest runs of each way")
    p.add_argument("--no-redis", action="store_true", help="run the collector without Redis")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument("--skip-ingest", action="store_true", help="latency only")
    p.add_argument("--skip-latency", action="store_true", help="ingest only")


def run(args: argparse.Namespace) -> dict[str, Figure]:
    figures: dict[str, Figure] = {}
    if not args.skip_latency and not args.skip_open_day:
        figures.update(open_day(args))
    if not args.skip_latency and not args.skip_30m:
        figures.update(latency(args))
    if not args.skip_ingest:
        figures.update(ingest(args))
    return figures


# -- the open day ------------------------------------------------------------------------------

TARGET_COMMON_P99_MS = 50.0
NAMES = ["app.tasks.send_email", "app.tasks.sync_orders", "billing.invoice", "etl.load_day"]


def open_day(args: argparse.Namespace) -> dict[str, Figure]:
    """Today's partition holds `--today-lines` lines (made by SQL, not through the collector),
    indexed as the collector's index thread leaves it (`collector.searchindex.apply`), plus
    the newest minutes not indexed yet; 29 closed days of `--past-lines` with their day indexes.
    The baseline of the same run is what main did before: today's lines in one scanned window.
    """
    title(f"search over the open day: {args.today_lines:,} lines today")
    url = with_database(args.database_url, args.open_db)
    _ensure_open_day(args, url)
    markers = json.loads(scalar(url, "SELECT value FROM bench_meta WHERE key = 'markers'"))
    tail = _add_tail(url, args)
    today = scalar(url, "SELECT count(*) FROM lines WHERE ts >= date_trunc('day', now())")
    indexes = scalar(
        url,
        "SELECT count(*) FROM pg_class WHERE relname LIKE 'lines%%' AND right(relname, 5) = '_trgm'"
        " AND relkind = 'i'",
    )
    row("lines today / not indexed yet (the tail)", f"{today:,} / {tail:,}")
    row("trigram indexes (slices of today, closed days)", f"{indexes}")
    kinds = {
        "rare marker": [f"q={m}" for m in markers],
        "common word": ["q=invoice", "q=timeout", "q=payload", "q=Cache+Hit"],
        "rare marker, one task name": [f"q={m}&name={n}" for m in markers for n in NAMES[:1]],
        "common word, one task name": [f"q=invoice&name={n}" for n in NAMES],
        "rare marker, 30 days (since)": [
            f"q={m}&since=" + urllib.parse.quote(_days_ago(url, 30)) for m in markers
        ],
    }
    runs = _time_api(url, kinds, args)
    figures: dict[str, Figure] = {}
    targets = {"rare marker": TARGET_RARE_P99_MS, "common word": TARGET_COMMON_P99_MS}
    for name in kinds:
        for p in (50, 99):
            fig = Figure(f"today: {name}, p{p}", "ms", [percentile(r, p) for r in runs[name]])
            note = ""
            if p == 99 and name in targets:
                ok = fig.median <= targets[name]
                note = f"target p99 <= {targets[name]:g} ms: {verdict(ok)}"
            row(fig.name, fig.text(1), note)
            figures[fig.name] = fig
    for name, search in [
        ("rare marker", Search(random.choice(markers))),
        ("common word", Search("invoice")),
    ]:
        fig = Figure(f"today: {name}, baseline (today scanned)", "ms", [])
        for _ in range(args.scan_runs):
            fig.values.append(_search_in_process(url, search, slices=False))
        after = figures[f"today: {name}, p50"].median
        row(fig.name, fig.text(0), f"{fig.median / after:.0f}x the p50 with the slices")
        figures[fig.name] = fig
    figures.update(_slice_build(url))
    return figures


def _add_tail(url: str, args: argparse.Namespace) -> int:
    """As many lines as `--tail-minutes` of a day of `--today-lines` hold, stored after the last
    slice built: what a search scans at worst (a slice's length plus the time its build takes)."""
    import psycopg

    count = int(args.tail_minutes * args.today_lines / 1440)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        conn.execute("DELETE FROM lines WHERE task_id = 'bench-tail'")
        clock = conn.execute(Q["now"]).fetchone()
        assert clock is not None
        slices = [trigram.parse(n) for n in clock[1]]
        done = max([s.high for s in slices if isinstance(s, trigram.Slice)] or [clock[0]])
        rows = _LINE_ROWS.format(
            n=count, low="%(done)s::timestamptz", span="(now() - %(done)s)", offset="0"
        )
        rows = rows.replace("md5(((i + 0) / 100)::text)::uuid::text", "'bench-tail'")
        conn.execute(rows.replace("(i + 0) %% 100 + 1", "i + 1").encode(), {"done": done})
        conn.execute("ANALYZE lines")
        found = conn.execute("SELECT count(*) FROM lines WHERE ts >= %s", (done,)).fetchone()
    return int(found[0]) if found else 0


def _time_api(
    url: str, kinds: dict[str, list[str]], args: argparse.Namespace
) -> dict[str, list[list[float]]]:
    runs: dict[str, list[list[float]]] = {name: [] for name in kinds}
    with workdir() as tmp, children() as procs:
        from tasklog.demo.embedded import free_port

        port = free_port()
        api = Child(
            "api",
            [python(), "-m", "tasklog", "api"],
            {
                "TASKLOG_DATABASE_URL": url,
                "TASKLOG_API_PORT": str(port),
                "TASKLOG_LOG_LEVEL": "warning",
            },
            Path(tmp),
        )
        procs.append(api)
        wait_for(
            lambda: api_latency._get(port, "/tasklog/healthz", quiet=True) is not None,
            60,
            "the API to answer",
            api,
        )
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        base = "/tasklog/api/search/?"
        for name, queries in kinds.items():
            conn.request("GET", base + queries[0])
            response = conn.getresponse()
            body = json.loads(response.read())
            assert response.status == 200, body
            row(f"  {name}: matches on the first page", str(len(body["results"])))
        for _ in range(args.runs):
            for name, queries in kinds.items():
                for query in queries[:3]:  # warm-up: the pool's connections, plans, cache
                    api_latency._timed(conn, base + query)
                runs[name].append(
                    [
                        api_latency._timed(conn, base + random.choice(queries))
                        for _ in range(args.requests)
                    ]
                )
        conn.close()
    return runs


def _search_in_process(url: str, search: Search, slices: bool) -> float:
    """One first page of `search` in this process, in ms; without `slices` today is one
    scanned window (as before the slices)."""
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        started = time.perf_counter()
        clock = conn.execute(Q["now"]).fetchone()
        assert clock is not None
        names = [
            n for n in clock["indexes"] if slices or not isinstance(trigram.parse(n), trigram.Slice)
        ]
        found = 0
        for group in search.groups(clock["now"], names):
            query, values = search.statement_for(group, 51 - found)
            found += len(conn.execute(query, values).fetchall())
            if found >= 51:
                break
        return (time.perf_counter() - started) * 1000


def _slice_build(url: str) -> dict[str, Figure]:
    """What one slice (`trigram.SLICE`) costs to build at the end of this day (a concurrent partial
    index: two passes over the day's partition, then the slice's lines)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        partition = conn.execute(
            "SELECT 'lines_' || to_char(now(), 'YYYYMMDD'), now() - %s, now()", (trigram.SLICE,)
        ).fetchone()
        assert partition is not None
        name, low, high = partition
        started = time.perf_counter()
        conn.execute(
            sql.SQL(
                "CREATE INDEX CONCURRENTLY bench_slice ON {} USING gin (message gin_trgm_ops)"
                " WHERE ts >= {} AND ts < {}"
            ).format(sql.Identifier(name), sql.Literal(low), sql.Literal(high))
        )
        took = time.perf_counter() - started
        conn.execute("DROP INDEX bench_slice")
    fig = Figure("today: one slice built (the last minutes)", "s", [took])
    row(fig.name, fig.text(1), "off the ingest path, by the collector's index thread")
    return {fig.name: fig}


def _days_ago(url: str, days: int) -> str:
    return str(scalar(url, f"SELECT to_char(now() - interval '{days} days', 'YYYY-MM-DD')"))


def _ensure_open_day(args: argparse.Namespace, url: str) -> None:
    import psycopg

    from collector import searchindex
    from collector.migrate import migrate

    wanted = f"{args.today_lines}/{args.past_lines}"
    with psycopg.connect(args.database_url, autocommit=True) as admin:
        exists = admin.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (args.open_db,)
        ).fetchone()
        if exists and not args.rebuild:
            try:
                made = scalar(url, "SELECT value FROM bench_meta WHERE key = 'made'")
                day = scalar(url, "SELECT value FROM bench_meta WHERE key = 'day'")
                today = scalar(url, "SELECT (now() AT TIME ZONE 'UTC')::date::text")
            except psycopg.Error:
                made = day = today = None
            if made == wanted and day == today:
                again = "--rebuild to make it again"
                print(f"  reusing {args.open_db} ({wanted}; {again})", flush=True)
                started = time.monotonic()
                migrate(url)
                print(f"  {searchindex.apply(url, True)}", flush=True)
                print(f"  ({time.monotonic() - started:.0f}s)", flush=True)
                return
        admin.execute(f'DROP DATABASE IF EXISTS "{args.open_db}" WITH (FORCE)'.encode())
        admin.execute(f'CREATE DATABASE "{args.open_db}"'.encode())
    migrate(url)
    started = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in _OPEN_DAY:
            conn.execute(statement.encode(), {"today": args.today_lines, "past": args.past_lines})
        markers = [f"rare-{secrets.token_hex(4)}" for _ in range(MARKERS)]
        conn.execute(
            "INSERT INTO lines (task_id, seq, ts, stream, message)"
            " SELECT md5((17 + n * 991)::text)::uuid::text, 1000 + n,"
            "        date_trunc('day', now()) + random() * (now() - date_trunc('day', now())),"
            "        'stdout', m || ' order settled'"
            " FROM unnest(%s::text[]) WITH ORDINALITY AS u(m, n)",
            (markers,),
        )
        conn.execute("CREATE TABLE bench_meta (key text PRIMARY KEY, value text)")
        conn.execute(
            "INSERT INTO bench_meta VALUES ('made', %s), ('markers', %s),"
            " ('day', (now() AT TIME ZONE 'UTC')::date::text)",
            (wanted, json.dumps(markers)),
        )
        conn.execute("VACUUM ANALYZE lines")
        conn.execute("VACUUM ANALYZE tasks")
    print(f"  made {args.open_db} ({time.monotonic() - started:.0f}s)", flush=True)
    started = time.monotonic()
    print(f"  {searchindex.apply(url, True)} ({time.monotonic() - started:.0f}s)", flush=True)


# Today's lines spread over the day so far, in tasks of 100 lines; 29 closed days before it.
# Partitions as the collector names them; messages like bench api's.
_OPEN_DAY = [
    "SET TIME ZONE 'UTC'",
    """
    DO $$
    DECLARE d date;
    BEGIN
        FOR d IN SELECT generate_series(current_date - 29, current_date, interval '1 day')::date
        LOOP
            EXECUTE format(
                'CREATE TABLE lines_%%s PARTITION OF lines FOR VALUES FROM (%%L) TO (%%L)',
                to_char(d, 'YYYYMMDD'), d::text || ' 00:00+00', (d + 1)::text || ' 00:00+00');
        END LOOP;
    END
    $$
    """,
    """
    INSERT INTO tasks (task_id, task_name, state, created_at, line_count, last_seq)
    SELECT md5(i::text)::uuid::text,
           (ARRAY['app.tasks.send_email', 'app.tasks.resize_image', 'app.tasks.sync_orders',
                  'app.tasks.build_report', 'app.tasks.import_csv', 'app.tasks.charge_card',
                  'app.tasks.refresh_cache', 'app.tasks.export_pdf', 'billing.invoice',
                  'etl.load_day'])[1 + i %% 10],
           'SUCCESS', now(), 100, 100
    FROM generate_series(0, (%(today)s + 29 * %(past)s) / 100) AS i
    """,
    _LINE_ROWS.format(
        n="%(today)s",
        low="date_trunc('day', now())",
        span="(now() - date_trunc('day', now()) - interval '1 min')",
        offset="0",
    ),
    _LINE_ROWS.format(
        n="29 * %(past)s",
        low="date_trunc('day', now()) - interval '29 days'",
        span="interval '29 days'",
        offset="%(today)s",
    ),
]


def latency(args: argparse.Namespace) -> dict[str, Figure]:
    title("search latency at 1M tasks / 10M lines")
    url = with_database(args.database_url, api_latency.DB_NAME)
    api_latency._ensure_database(args.database_url, url, False)
    from collector import searchindex
    from collector.migrate import migrate

    started = time.monotonic()
    applied = migrate(url)
    if applied:
        print(f"  applied {', '.join(applied)} ({time.monotonic() - started:.0f}s)", flush=True)
    started = time.monotonic()
    state = searchindex.apply(url, True)
    print(f"  {state} ({time.monotonic() - started:.0f}s)", flush=True)
    markers = _markers(url)
    lines = scalar(url, "SELECT value FROM bench_meta WHERE key = 'lines'")
    row("lines in the database", f"{int(lines):,}")
    kinds = {
        "rare marker, first page": [f"q={m}" for m in markers],
        "common word, first page": ["q=invoice", "q=timeout", "q=payload", "q=Cache+Hit"],
        "regex, a tenth of the lines, first page": [
            "q=" + urllib.parse.quote("item [0-9]+ of 1000:") + "&regex=1"
        ],
        "regex, one marker, first page": [
            "q=" + urllib.parse.quote(f"^rare-{m[5:11]}[0-9a-f]{{2}} ") + "&regex=1"
            for m in markers
        ],
    }
    runs: dict[str, list[list[float]]] = {name: [] for name in kinds}
    with workdir() as tmp, children() as procs:
        from tasklog.demo.embedded import free_port

        port = free_port()
        api = Child(
            "api",
            [python(), "-m", "tasklog", "api"],
            {
                "TASKLOG_DATABASE_URL": url,
                "TASKLOG_API_PORT": str(port),
                "TASKLOG_LOG_LEVEL": "warning",
            },
            Path(tmp),
        )
        procs.append(api)
        wait_for(
            lambda: api_latency._get(port, "/tasklog/healthz", quiet=True) is not None,
            60,
            "the API to answer",
            api,
        )
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        base = "/tasklog/api/search/?"
        counts = {}
        for name, queries in kinds.items():
            conn.request("GET", base + queries[0])
            body = json.loads(conn.getresponse().read())
            counts[name] = len(body["results"])
        for _ in range(args.runs):
            for name, queries in kinds.items():
                for query in queries[:5]:  # warm-up: the pool's connections, plans, cache
                    api_latency._timed(conn, base + query)
                runs[name].append(
                    [
                        api_latency._timed(conn, base + random.choice(queries))
                        for _ in range(args.requests)
                    ]
                )
        conn.close()
    figures: dict[str, Figure] = {}
    for name in kinds:
        for p in (50, 99):
            fig = Figure(f"{name}, p{p}", "ms", [percentile(r, p) for r in runs[name]])
            note = f"{counts[name]} matches on the page" if p == 50 else ""
            if p == 99 and name.startswith("rare marker"):
                ok = fig.median <= TARGET_RARE_P99_MS
                note = f"target p99 <= {TARGET_RARE_P99_MS:g} ms: {verdict(ok)}"
            row(fig.name, fig.text(1), note)
            figures[f"{name} p{p}"] = fig
    figures.update(_without_index(url, markers, args.scan_runs))
    return figures


def _markers(url: str) -> list[str]:
    """Rare markers, each printed once by a random task (planted once, kept in bench_meta)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        got = conn.execute("SELECT value FROM bench_meta WHERE key = 'search_markers'").fetchone()
        if got:
            return list(json.loads(got[0]))
        markers = [f"rare-{secrets.token_hex(4)}" for _ in range(MARKERS)]
        tasks = conn.execute(
            "SELECT task_id, created_at FROM tasks WHERE line_count > 0 ORDER BY random() LIMIT %s",
            (MARKERS,),
        ).fetchall()
        for marker, (task_id, created) in zip(markers, tasks, strict=True):
            conn.execute(
                "INSERT INTO lines (task_id, seq, ts, stream, level, message)"
                " VALUES (%s, 1000000, %s + interval '1 s', 'stdout', NULL, %s)",
                (task_id, created, f"{marker} order settled"),
            )
        conn.execute("INSERT INTO bench_meta VALUES ('search_markers', %s)", (json.dumps(markers),))
        conn.execute("ANALYZE lines")
    return markers


def _without_index(url: str, markers: list[str], runs: int) -> dict[str, Figure]:
    """The same first-page searches with index scans off: what search costs with no index."""
    import psycopg
    from psycopg.rows import dict_row

    out: dict[str, Figure] = {}
    for name, search in [
        ("rare marker, first page, no index (scan)", Search(random.choice(markers))),
        ("common word, first page, no index (scan)", Search("invoice")),
    ]:
        timings = []
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            for _ in range(runs):
                started = time.perf_counter()
                with conn.transaction():
                    conn.execute("SET LOCAL enable_bitmapscan = off")
                    conn.execute("SET LOCAL enable_indexscan = off")
                    now = conn.execute(Q["now"]).fetchone()["now"]  # type: ignore[index]
                    found = 0
                    for low, high in search.windows(now):
                        query, values = search.statement(low, high, 51 - found)
                        found += len(conn.execute(query, values).fetchall())
                        if found >= 51:
                            break
                timings.append((time.perf_counter() - started) * 1000)
        fig = Figure(name, "ms", timings)
        row(fig.name, fig.text(0), "the same SQL, index scans switched off")
        out[name] = fig
    return out


# -- ingest ------------------------------------------------------------------------------------


SEARCH_OFF = {"TASKLOG_SEARCH": "false"}


class SearchDatabases(Databases):
    """Fresh migrated databases with the search index on or off (as TASKLOG_SEARCH makes it)."""

    def __init__(self, server_url: str, enabled: bool) -> None:
        super().__init__(server_url)
        self.enabled = enabled

    def fresh(self) -> str:
        import psycopg

        from collector import searchindex

        url = super().fresh()
        searchindex.apply(url, self.enabled)
        if self.enabled:
            # Late in the day: today's partition carries the partial indexes of the hours
            # and of an hour's slices but one, whose predicates every stored line is tested
            # against (none of them holds for a line of now).
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("SET TIME ZONE 'UTC'")
                day = conn.execute("SELECT date_trunc('day', now()), now()").fetchone()
                assert day is not None
                midnight, now = day
                partition = sql.Identifier(f"lines_{midnight:%Y%m%d}")
                create = "CREATE TABLE {} PARTITION OF lines FOR VALUES FROM ({}) TO ({})"
                conn.execute(
                    sql.SQL(create).format(
                        partition, sql.Literal(midnight), sql.Literal(midnight + timedelta(days=1))
                    )
                )
                ranges = [(h * 60, h * 60 + 60) for h in range(24)]
                step = int(trigram.SLICE.total_seconds() // 60)
                ranges += [(m, m + step) for m in range(0, 60 - step, step)]
                away = timedelta(hours=1)
                for i, (low, high) in enumerate(ranges):
                    lo, hi = midnight + timedelta(minutes=low), midnight + timedelta(minutes=high)
                    if lo - away < now < hi + away:
                        continue
                    conn.execute(
                        sql.SQL(
                            "CREATE INDEX {} ON {} USING gin (message gin_trgm_ops)"
                            " WHERE ts >= {} AND ts < {}"
                        ).format(
                            sql.Identifier(f"bench_slice_{i}"),
                            partition,
                            sql.Literal(lo),
                            sql.Literal(hi),
                        )
                    )
        return url


def ingest(args: argparse.Namespace) -> dict[str, Figure]:
    title(f"collector with the search index on vs off: {args.lines:,} lines, {args.files:,} files")
    on, off = SearchDatabases(args.database_url, True), SearchDatabases(args.database_url, False)
    rates: dict[str, list[float]] = {"on": [], "off": [], "copy on": [], "copy off": []}
    try:
        with workdir(args.keep) as tmp:
            master = tmp / "master"
            fill_spool(master, args.files, args.lines)
            copy_file = tmp / "rows.copy"
            days = copy_rows(master, copy_file)
            for i in range(args.ingest_runs):
                # Alternating, so a change in the machine's load falls on both ways.
                rates["off"].append(
                    collect_once(
                        master, tmp / f"off{i}", off, args, args.lines, extra_env=SEARCH_OFF
                    )["rate"]
                )
                rates["on"].append(
                    collect_once(master, tmp / f"on{i}", on, args, args.lines)["rate"]
                )
                rates["copy off"].append(psql_copy(copy_file, days, off, args.lines))
                rates["copy on"].append(psql_copy(copy_file, days, on, args.lines))
    finally:
        on.close()
        off.close()
    figs = {
        "collector, search index on": Figure("collector, search index on", "lines/s", rates["on"]),
        "collector, search index off": Figure(
            "collector, search index off", "lines/s", rates["off"]
        ),
        "raw COPY, index on": Figure("raw COPY (psql), index on", "lines/s", rates["copy on"]),
        "raw COPY, index off": Figure("raw COPY (psql), index off", "lines/s", rates["copy off"]),
    }
    for fig in figs.values():
        row(fig.name, fig.text(0))
    on_rate = figs["collector, search index on"].median
    off_rate = figs["collector, search index off"].median
    ratio_off = off_rate / figs["raw COPY, index off"].median
    ratio_on = on_rate / figs["raw COPY, index on"].median
    ratio_plain = on_rate / figs["raw COPY, index off"].median
    ok = on_rate / off_rate >= TARGET_ON_OFF
    row(
        "collector on / off",
        f"{on_rate / off_rate:.2f}x",
        f"target >= {TARGET_ON_OFF}x: {verdict(ok)}",
    )
    row("collector / raw COPY, index off", f"{ratio_off:.2f}x", "the collector's ratio today")
    row(
        "collector / raw COPY, index on",
        f"{ratio_on:.2f}x",
        f"target >= {TARGET_COPY_RATIO}x: {verdict(ratio_on >= TARGET_COPY_RATIO)}",
    )
    row("collector with index / raw COPY without", f"{ratio_plain:.2f}x")
    return figs
