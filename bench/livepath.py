"""Live path: Redis messages per stored line with 0, 1 and 100 followed tasks.

Runs the real ``python -m tasklog collector`` and ``python -m tasklog api`` against a Redis of
their own (an embedded server started here, so its counters are theirs alone) and a fresh
database. A writer process prints through the shim's own `TaskCapture` into the spool:
``--tasks`` tasks at once, ``--rate`` lines/s in all, for ``--seconds``. For each scenario
this process follows N of those tasks over SSE (``GET /tasklog/sse/task/<id>/``), checks that
each follower gets every line once, and reads from Redis what was published (``INFO
commandstats``, and a pattern subscription of its own to tell lines from task rows) and from
the API what it received (``tasklog_api_redis_messages_total``).

The baseline in the same run is what publishing every line would send: one lines message per
task per stored batch, which is the count of task-row messages measured (every batch publishes
the row of each task it stored lines for).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import redis

from bench.common import Child, Databases, children, python, row, scalar, title, wait_for, workdir
from tasklog.core.constants import LINES_CHANNEL_PREFIX, TASKS_CHANNEL, WATCHED_KEY


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", type=int, default=200, help="tasks printing at once")
    p.add_argument("--rate", type=float, default=4000, help="lines per second in all")
    p.add_argument("--seconds", type=float, default=10, help="how long the tasks print")
    p.add_argument(
        "--followed", default="0,1,100", help="comma-separated numbers of followed tasks"
    )
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tasklog.demo.embedded import free_port
    from tasklog.demo.embedded_redis import EmbeddedRedis

    scenarios = [int(n) for n in args.followed.split(",")]
    if max(scenarios) > args.tasks:
        raise SystemExit("--followed: at most --tasks tasks can be followed")
    title(
        f"live path: {args.tasks} tasks printing {args.rate:,.0f} lines/s in all for "
        f"{args.seconds:g}s; Redis messages per stored line"
    )
    dbs = Databases(args.database_url)
    results: dict[str, Any] = {}
    try:
        with workdir(args.keep) as tmp, children() as procs:
            server = EmbeddedRedis(tmp / "redis")
            server.start()
            try:
                spool = tmp / "spool"
                spool.mkdir()
                url = dbs.fresh()
                port = free_port()
                env = {
                    "TASKLOG_DATABASE_URL": url,
                    "TASKLOG_REDIS_URL": server.url(),
                    "TASKLOG_SPOOL_DIR": str(spool),
                    "TASKLOG_HOST": "bench",
                }
                collector = Child("collector", [python(), "-m", "tasklog", "collector"], env, tmp)
                procs.append(collector)
                api_env = {**env, "TASKLOG_API_PORT": str(port), "TASKLOG_LOG_LEVEL": "warning"}
                api = Child("api", [python(), "-m", "tasklog", "api"], api_env, tmp)
                procs.append(api)
                collector.wait_for_log("following", timeout=60)
                base = f"http://127.0.0.1:{port}/tasklog"
                wait_for(lambda: _health(base), 60, "the API to answer", api)
                for followed in scenarios:
                    results[str(followed)] = _scenario(
                        args, followed, spool, url, server.url(), base
                    )
            finally:
                server.stop()
    finally:
        dbs.close()
    _report(results)
    return results


def _scenario(
    args: argparse.Namespace, followed: int, spool: Path, db: str, redis_url: str, base: str
) -> dict[str, float]:
    prefix = f"live{followed}-"
    ids = [f"{prefix}{i:04d}" for i in range(args.tasks)]
    per_task = int(args.rate * args.seconds) // args.tasks
    client = redis.Redis.from_url(redis_url)
    try:
        listener = client.pubsub()
        listener.psubscribe(LINES_PREFIX_PATTERN)
        listener.subscribe(TASKS_CHANNEL)
        received_before = _api_received(base)
        counts: dict[str, int] = {}
        stop = asyncio.Event()

        async def scenario() -> list[int]:
            async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_read=120)
            ) as session:
                followers = [
                    asyncio.create_task(_follow(session, f"{base}/sse/task/{task_id}/"))
                    for task_id in ids[:followed]
                ]
                # Start printing once the API marked every followed task as watched.
                await asyncio.to_thread(
                    wait_for,
                    lambda: _watched(client, ids[:followed]),
                    60,
                    "the followed tasks to be marked watched",
                )
                client.config_resetstat()
                counter = asyncio.create_task(asyncio.to_thread(_count, listener, counts, stop))
                writer = multiprocessing.get_context("fork").Process(
                    target=_write, args=(spool, ids, per_task, args.seconds)
                )
                writer.start()
                await asyncio.to_thread(writer.join)
                await asyncio.to_thread(
                    wait_for,
                    lambda: _ended(db, prefix) == len(ids),
                    120,
                    "every task stored",
                )
                got = await asyncio.gather(*followers)
                await asyncio.sleep(1)  # the last messages reach the listener
                stop.set()
                await counter
                return got

        got = asyncio.run(scenario())
        stats = client.info("commandstats")
        published = int(stats.get("cmdstat_publish", {}).get("calls", 0))
        listener.close()
    finally:
        client.close()
    stored = int(scalar(db, SUM_LINES, (prefix + "%",)))
    if stored != per_task * len(ids):
        raise RuntimeError(f"stored {stored} lines, expected {per_task * len(ids)}")
    if any(n != per_task for n in got):
        raise RuntimeError(f"a follower missed lines: {sorted(set(got))} (expected {per_task})")
    return {
        "lines": stored,
        "published": published,
        "lines_messages": counts.get("lines", 0),
        "task_messages": counts.get("tasks", 0),
        "api_received": _api_received(base) - received_before,
    }


LINES_PREFIX_PATTERN = LINES_CHANNEL_PREFIX + "*"
SUM_LINES = "SELECT coalesce(sum(line_count), 0) FROM tasks WHERE task_id LIKE %s"


def _report(results: dict[str, Any]) -> None:
    row("followed tasks", "Redis messages per stored line (lines + task rows)")
    for followed, r in results.items():
        lines = r["lines"]
        row(
            f"  {followed:>3} followed ({lines:,} lines stored)",
            f"{r['published'] / lines:.4f} per line "
            f"({r['lines_messages']:,} lines messages + {r['task_messages']:,} task rows)",
            f"API received {r['api_received'] / lines:.4f} lines messages per line",
        )
        row(
            "      publishing every line instead (same batches)",
            f"{(2 * r['task_messages']) / lines:.4f} per line",
        )


async def _follow(session: aiohttp.ClientSession, url: str) -> int:
    """Lines received until the stream ends, checking each comes once, in order."""
    expected, count = 1, 0
    async with session.get(url) as response:
        async for raw in response.content:
            line = raw.decode().strip()
            if line.startswith("id: "):
                seq = int(line[4:])
                if seq != expected:
                    raise RuntimeError(f"{url}: seq {seq} after {expected - 1}")
                expected += 1
                count += 1
            elif line.startswith("data: ") and '"type":"end"' in line.replace(" ", ""):
                return count
    return count


def _count(listener: Any, counts: dict[str, int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        message = listener.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if message is None:
            continue
        kind = "tasks" if message["channel"] == TASKS_CHANNEL.encode() else "lines"
        counts[kind] = counts.get(kind, 0) + 1


def _write(spool: Path, ids: list[str], per_task: int, seconds: float) -> None:
    """Every task prints `per_task` lines, paced over `seconds`, round-robin."""
    from bench.common import sample_lines
    from capture_shim.capture import TaskCapture
    from capture_shim.config import ShimConfig

    config = ShimConfig(
        enabled=True,
        spool_dir=str(spool),
        max_lines=per_task + 10,
        max_line_bytes=16384,
        record_args=False,
    )
    caps = [TaskCapture(config, i, {"task_id": i, "name": "bench.live"}) for i in ids]
    pool = sample_lines(10_007, seed=5)
    total = per_task * len(ids)
    started = time.monotonic()
    sent = 0
    while sent < total:
        due = min(total, int((time.monotonic() - started) / seconds * total) + 1)
        while sent < due:
            caps[sent % len(caps)].emit("stdout", pool[sent % len(pool)])
            sent += 1
        time.sleep(0.002)
    for cap in caps:
        cap.finish("SUCCESS")


def _watched(client: redis.Redis, ids: list[str]) -> bool:
    if not ids:
        return True
    scores = client.execute_command("ZMSCORE", WATCHED_KEY, *ids)
    return all(score is not None for score in scores)


def _ended(db: str, prefix: str) -> int:
    return int(
        scalar(db, "SELECT count(completed_at) FROM tasks WHERE task_id LIKE %s", (prefix + "%",))
    )


def _health(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _api_received(base: str) -> float:
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(r'^tasklog_api_redis_messages_total\{channel="lines"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0
