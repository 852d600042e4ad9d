"""Where the time from print to browser goes, step by step, in one run.

Each step of the live path measured on its own, each with what it was before beside it:

- **file watcher**: an append to a spool file until the collector's watcher
  (`collector.watcher`) calls back, with its step (a tenth of ``TASKLOG_DEBOUNCE_MS``, at
  least 1 ms), and its idle CPU; before: `watchfiles.awatch` with a 10 ms step;
- **COPY** of one line and its task row's update, then the **commit** (the WAL flush), on a
  fresh migrated database;
- **publish**: one Redis ``PUBLISH`` round trip of a lines message's size.

The SSE write itself is the difference between ``bench latency``'s print -> SSE client and
print -> row figures.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import resource
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.common import Databases, Figure, percentile, row, title
from collector import watcher


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", type=int, default=100, help="timed events per step and run")
    p.add_argument("--runs", type=int, default=3, help="runs of each step")


def run(args: argparse.Namespace) -> dict[str, Figure]:
    from collector.settings import CollectorSettings

    title("print -> browser, step by step")
    debounce = CollectorSettings.model_fields["debounce_ms"].default
    now_step = watcher.step_ms(debounce)
    figures: dict[str, Figure] = {}
    ways: dict[str, Watch] = {
        f"step {now_step} ms (now)": functools.partial(_collectors, now_step),
        "awatch, step 10 ms (before)": functools.partial(_awatch, 50, 10),
    }
    for name, way in ways.items():
        runs = [asyncio.run(_watcher(way, args.samples)) for _ in range(args.runs)]
        for p in (50, 99):
            fig = Figure(f"file watcher, {name}, p{p}", "ms", [percentile(r, p) for r in runs])
            row(fig.name, fig.text(1))
            figures[fig.name] = fig
        cpu = asyncio.run(_idle_cpu(way))
        row(f"file watcher, {name}, idle CPU", f"{cpu:.2f}% of a core")
    dbs = Databases(args.database_url)
    try:
        url = dbs.fresh()
        copies, commits = asyncio.run(_commit(url, args.samples * args.runs))
    finally:
        dbs.close()
    publishes = asyncio.run(_publish(args.redis_url, args.samples * args.runs))
    for name, values in (
        ("COPY one line + its task row", copies),
        ("commit (WAL flush)", commits),
        ("Redis PUBLISH round trip", publishes),
    ):
        for p in (50, 99):
            fig = Figure(f"{name}, p{p}", "ms", [percentile(values, p)])
            row(fig.name, fig.text(2))
            figures[fig.name] = fig
    return figures


#: A file watcher: watches a directory, calling back on each change, until cancelled.
Watch = Callable[[str, Callable[[], None]], Awaitable[None]]


async def _collectors(step: int, directory: str, woken: Callable[[], None]) -> None:
    """The collector's own (`collector.watcher`)."""
    await watcher.follow(Path(directory), step, lambda _: woken())


async def _awatch(debounce: int, step: int, directory: str, woken: Callable[[], None]) -> None:
    """The collector's before: `watchfiles.awatch` with the old debounce and step."""
    from watchfiles import awatch

    async for _ in awatch(
        directory,
        debounce=debounce,
        step=step,
        recursive=False,
        rust_timeout=1000,
        yield_on_timeout=False,
    ):
        woken()


async def _watcher(way: Watch, samples: int) -> list[float]:
    with tempfile.TemporaryDirectory() as directory:
        fd = os.open(os.path.join(directory, "spool"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        woken: asyncio.Queue[float] = asyncio.Queue()
        task = asyncio.create_task(
            way(directory, lambda: woken.put_nowait(time.perf_counter())), name="watch"
        )
        await asyncio.sleep(0.5)
        delays = []
        for i in range(samples):
            written = time.perf_counter()
            os.write(fd, b'{"k":"l","n":1,"s":"o","m":"a line of output"}\n')
            delays.append((await woken.get() - written) * 1000)
            await asyncio.sleep(0.02 + (i % 7) * 0.003)  # prints at no fixed phase
        task.cancel()
        await asyncio.wait({task})
        os.close(fd)
    return delays


async def _idle_cpu(way: Watch, seconds: float = 3.0) -> float:
    with tempfile.TemporaryDirectory() as directory:
        task = asyncio.create_task(way(directory, lambda: None), name="watch")
        await asyncio.sleep(0.3)
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        await asyncio.sleep(seconds)
        after, ended = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        task.cancel()
        await asyncio.wait({task})
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return 100 * cpu / (ended - started)


async def _commit(url: str, samples: int) -> tuple[list[float], list[float]]:
    import psycopg

    async with await psycopg.AsyncConnection.connect(url) as conn:
        await conn.execute(
            "CREATE TABLE lines_steps PARTITION OF lines FOR VALUES"
            " FROM (now() - interval '1 day') TO (now() + interval '1 day')"
        )
        await conn.execute("INSERT INTO tasks (task_id) VALUES ('steps')")
        await conn.commit()
        copies, commits = [], []
        for seq in range(1, samples + 1):
            started = time.perf_counter()
            async with conn.cursor() as cur:
                copy = "COPY lines (task_id, seq, ts, stream, message) FROM STDIN"
                async with cur.copy(copy) as rows:
                    await rows.write_row(("steps", seq, "now", "stdout", "a line of output"))
                await cur.execute(
                    "UPDATE tasks SET last_seq = %s, line_count = line_count + 1"
                    " WHERE task_id = 'steps'",
                    (seq,),
                )
            copied = time.perf_counter()
            await conn.commit()
            copies.append((copied - started) * 1000)
            commits.append((time.perf_counter() - copied) * 1000)
            await asyncio.sleep(0.01)
    return copies, commits


async def _publish(redis_url: str, samples: int) -> list[float]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        out = []
        for _ in range(samples):
            started = time.perf_counter()
            await client.publish("tasklog-bench-steps", b"x" * 300)
            out.append((time.perf_counter() - started) * 1000)
        return out
    finally:
        await client.aclose()
