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
from pathlib import Path

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

TARGET_RARE_P99_MS = 300.0
TARGET_COPY_RATIO = 0.5
MARKERS = 20


def add_arguments(p: argparse.ArgumentParser) -> None:
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
    if not args.skip_latency:
        figures.update(latency(args))
    if not args.skip_ingest:
        figures.update(ingest(args))
    return figures


# -- latency -----------------------------------------------------------------------------------


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

    from api.find import Q, Search

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


class SearchDatabases(Databases):
    """Fresh migrated databases with the search index on or off (as TASKLOG_SEARCH makes it)."""

    def __init__(self, server_url: str, enabled: bool) -> None:
        super().__init__(server_url)
        self.enabled = enabled

    def fresh(self) -> str:
        from collector import searchindex

        url = super().fresh()
        searchindex.apply(url, self.enabled)
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
                    collect_once(master, tmp / f"off{i}", off, args, args.lines)["rate"]
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
    row("collector on / off", f"{on_rate / off_rate:.2f}x")
    row("collector / raw COPY, index off", f"{ratio_off:.2f}x", "the collector's ratio today")
    row(
        "collector / raw COPY, index on",
        f"{ratio_on:.2f}x",
        f"target >= {TARGET_COPY_RATIO}x: {verdict(ratio_on >= TARGET_COPY_RATIO)}",
    )
    row("collector with index / raw COPY without", f"{ratio_plain:.2f}x")
    return figs
