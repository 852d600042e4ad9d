"""Benchmark 3: latency from ``print`` in a task to the row in Postgres and to an SSE client.

A solo-pool worker runs a task printing a line every ``--interval`` seconds, each line
carrying the time it was printed; the collector stores it, publishes it to Redis, and
``python -m tasklog api`` streams it (``GET /tasklog/sse/task/<id>/``). This process polls
Postgres every 2 ms for the rows and follows the SSE stream, noting when each line arrives.
Measured idle, then under a background load (``bench.load``, default 10,000 lines/s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import threading
import time
from pathlib import Path

from bench.common import (
    Child,
    Databases,
    Figure,
    children,
    percentile,
    python,
    row,
    solo_worker,
    title,
    verdict,
    workdir,
)
from tasklog.demo.embedded import free_port

#: Print → SSE client (issue 23): p99 idle, and under 10,000 lines/s of other output.
TARGETS_MS = {"sse_p99_idle": 10, "sse_p99_load": 20}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", type=int, default=300, help="lines printed per phase")
    p.add_argument("--interval", type=float, default=0.02, help="seconds between lines")
    p.add_argument("--load", type=float, default=10_000, help="background lines/s (0: none)")
    p.add_argument("--runs", type=int, default=3, help="tasks per phase")
    p.add_argument("--no-sse", action="store_true", help="measure the Postgres row only")
    p.add_argument(
        "--collector-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting of the collector (e.g. TASKLOG_DEBOUNCE_MS=50), repeatable",
    )


def run(args: argparse.Namespace) -> dict[str, Figure]:
    title("latency: print in a task -> row in Postgres, -> SSE client")
    dbs = Databases(args.database_url)
    try:
        with workdir() as tmp, children() as procs:
            return _run(args, tmp, procs, dbs)
    finally:
        dbs.close()


def _run(
    args: argparse.Namespace, tmp: Path, procs: list[Child], dbs: Databases
) -> dict[str, Figure]:
    import os

    spool = tmp / "spool"
    spool.mkdir()
    url = dbs.fresh()
    redis_db = args.redis_url
    queue = f"tasklog-bench-{secrets.token_hex(4)}"
    common = {
        "TASKLOG_DATABASE_URL": url,
        "TASKLOG_REDIS_URL": redis_db,
        "TASKLOG_SPOOL_DIR": str(spool),
        "TASKLOG_HOST": "bench",
    }
    extra = dict(item.split("=", 1) for item in args.collector_env)
    if extra:
        row("collector settings", " ".join(f"{k}={v}" for k, v in extra.items()))
    collector = Child(
        "collector", [python(), "-m", "tasklog", "collector"], {**common, **extra}, tmp
    )
    procs.append(collector)
    port = free_port()
    sse_url = None
    if not args.no_sse:
        api = Child(
            "api",
            [python(), "-m", "tasklog", "api"],
            {**common, "TASKLOG_API_PORT": str(port)},
            tmp,
        )
        procs.append(api)
        try:
            api.wait_for_log("listening on", timeout=60)
            sse_url = f"http://127.0.0.1:{port}/tasklog/sse/task/{{}}/"
        except (RuntimeError, TimeoutError) as exc:
            row("print -> SSE client", "skipped", f"the API did not start: {exc}".splitlines()[0])
    worker = Child(
        "worker",
        solo_worker(queue),
        {"TASKLOG_SPOOL_DIR": str(spool), "TASKLOG_BENCH_REDIS_URL": redis_db},
        tmp,
    )
    procs.append(worker)
    collector.wait_for_log("following", timeout=60)
    worker.wait_for_log("ready.", timeout=60)
    os.environ["TASKLOG_BENCH_REDIS_URL"] = redis_db
    from bench.celery_app import app

    figures: dict[str, Figure] = {}
    try:
        _measure(app, queue, url, sse_url, 20, args.interval)  # warm-up: imports, connections
        phases = ["idle"] + (["load"] if args.load else [])
        for phase in phases:
            load = None
            if phase == "load":
                load = Child(
                    "load",
                    [python(), "-m", "bench.load", "--rate", str(args.load), "--spool", str(spool)],
                    {},
                    tmp,
                )
                procs.append(load)
                time.sleep(2)  # the collector reaches its steady state
            db_runs: list[list[float]] = []
            sse_runs: list[list[float]] = []
            for _ in range(args.runs):
                db_ms, sse_ms = _measure(app, queue, url, sse_url, args.samples, args.interval)
                db_runs.append(db_ms)
                sse_runs.append(sse_ms)
            if load is not None:
                load.stop()
                print("  " + load.log_text().strip().splitlines()[-1])
            label = "idle" if phase == "idle" else f"under {args.load:,.0f} lines/s"
            figures.update(_report("print -> row in Postgres", label, phase, db_runs, None))
            if sse_url is not None:
                figures.update(_report("print -> SSE client", label, phase, sse_runs, phase))
    finally:
        app.close()
    return figures


def _report(
    what: str, label: str, phase: str, runs: list[list[float]], target_phase: str | None
) -> dict[str, Figure]:
    out = {}
    for p in (50, 95, 99):
        fig = Figure(f"{what}, {label}, p{p}", "ms", [percentile(r, p) for r in runs])
        note = ""
        key = f"sse_p{p}_{target_phase}"
        if target_phase is not None and key in TARGETS_MS:
            met = sum(value <= TARGETS_MS[key] for value in fig.values)
            note = (
                f"target <= {TARGETS_MS[key]} ms in every run: {verdict(met == len(fig.values))}"
                f" ({met} of {len(fig.values)})"
            )
        row(fig.name, fig.text(1), note)
        out[f"{'sse' if target_phase else 'db'}_p{p}_{phase}"] = fig
    return out


def _measure(
    app: object, queue: str, db_url: str, sse_url: str | None, count: int, interval: float
) -> tuple[list[float], list[float]]:
    """One task of `count` ticks; latencies in ms of each line to Postgres and to SSE."""
    task_id = f"lat-{secrets.token_hex(6)}"
    db_seen: dict[int, float] = {}
    sse_seen: dict[int, float] = {}
    printed: dict[int, float] = {}
    done = threading.Event()
    poller = threading.Thread(
        target=_poll_rows, args=(db_url, task_id, count, db_seen, printed, done), name="poll-rows"
    )
    poller.start()
    try:
        asyncio.run(
            _follow_and_send(app, queue, sse_url, task_id, count, interval, sse_seen, printed)
        )
        poller.join(timeout=60)
    finally:
        done.set()
        poller.join(timeout=10)
    if len(db_seen) < count:
        raise RuntimeError(f"only {len(db_seen)} of {count} lines reached Postgres")
    db_ms = [(db_seen[i] - printed[i]) * 1000 for i in range(1, count + 1)]
    sse_ms = [(sse_seen[i] - printed[i]) * 1000 for i in sse_seen]
    return db_ms, sse_ms


def _poll_rows(
    url: str,
    task_id: str,
    count: int,
    seen: dict[int, float],
    printed: dict[int, float],
    done: threading.Event,
) -> None:
    import psycopg

    last = 0
    with psycopg.connect(url, autocommit=True) as conn:
        deadline = time.monotonic() + 600
        while last < count and not done.is_set() and time.monotonic() < deadline:
            rows = conn.execute(
                "SELECT seq, message FROM lines WHERE task_id = %s AND seq > %s ORDER BY seq",
                (task_id, last),
            ).fetchall()
            now = time.time()
            for seq, message in rows:
                seen[seq] = now
                printed.setdefault(seq, _printed_at(message))
                last = max(last, seq)
            time.sleep(0.002)


def _printed_at(message: str) -> float:
    return float(message.rsplit(" ", 1)[1])


async def _follow_and_send(
    app: object,
    queue: str,
    sse_url: str | None,
    task_id: str,
    count: int,
    interval: float,
    seen: dict[int, float],
    printed: dict[int, float],
) -> None:
    import aiohttp

    timeout = count * interval + 60
    async with contextlib.AsyncExitStack() as stack:
        response = None
        if sse_url is not None:
            session = await stack.enter_async_context(aiohttp.ClientSession())
            response = await stack.enter_async_context(
                session.get(sse_url.format(task_id), timeout=aiohttp.ClientTimeout(total=None))
            )
            response.raise_for_status()
        result = app.send_task(
            "bench.ticks",
            args=(count, interval),  # type: ignore[attr-defined]
            queue=queue,
            task_id=task_id,
        )
        if response is not None:
            await asyncio.wait_for(_read_events(response, count, seen, printed), timeout)
        await asyncio.to_thread(result.get, timeout=timeout)
        result.forget()


async def _read_events(
    response: object, count: int, seen: dict[int, float], printed: dict[int, float]
) -> None:
    async for raw in response.content:  # type: ignore[attr-defined]
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line.startswith("data:"):
            continue
        event = json.loads(line[5:])
        if event.get("type") == "new_log":
            seq = event["id"]
            seen.setdefault(seq, time.time())
            printed.setdefault(seq, _printed_at(event["message"]))
        if len(seen) >= count:
            return
