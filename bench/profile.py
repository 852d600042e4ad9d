"""``python -m bench.profile shim|collector``: cProfile of a hot path, top functions by time.

``shim`` prints lines through the routed `sys.stdout` into a spool file, in-process;
``collector`` reads a shim-written spool and commits it batch by batch with the collector's
own `SpoolDir` and `Store`, in-process, against a fresh database (no watcher, no Redis).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

from bench.common import DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL, Databases, workdir


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    p.add_argument("target", choices=["shim", "collector"])
    p.add_argument("--lines", type=int, default=200_000)
    p.add_argument("--files", type=int, default=200)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--sort", default="tottime")
    p.add_argument("--no-profile", action="store_true", help="time only")
    p.add_argument(
        "--redis-url", default=os.environ.get("TASKLOG_BENCH_REDIS_URL", DEFAULT_REDIS_URL)
    )
    p.add_argument(
        "--database-url", default=os.environ.get("TASKLOG_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)
    )
    args = p.parse_args()
    with workdir() as tmp:
        if args.target == "shim":
            _shim(args, tmp)
        else:
            _collector(args, tmp)


def _run(args: argparse.Namespace, fn: object, *fargs: object) -> object:
    profiler = None if args.no_profile else cProfile.Profile()
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    result = fn(*fargs)  # type: ignore[operator]
    if profiler is not None:
        profiler.disable()
    elapsed = time.perf_counter() - started
    # The real stdout: inside the shim's capture, print() would go to the spool file.
    out = sys.__stdout__
    print(
        f"{args.target}: {args.lines:,} lines in {elapsed:.2f}s "
        f"({elapsed / args.lines * 1e6:.2f} us/line{'' if args.no_profile else ', profiled'})",
        file=out,
    )
    if profiler is not None:
        pstats.Stats(profiler, stream=out).sort_stats(args.sort).print_stats(args.top)
    return result


def _shim(args: argparse.Namespace, tmp: Path) -> None:
    from bench.printing import timed_prints
    from capture_shim.capture import TaskCapture, ensure_routing
    from capture_shim.config import ShimConfig

    config = ShimConfig(
        enabled=True, spool_dir=str(tmp), max_lines=1000, max_line_bytes=16384, record_args=False
    )
    ensure_routing()
    cap = TaskCapture(config, "profile", {"task_id": "profile"})
    cap.activate()
    try:
        _run(args, timed_prints, args.lines, 1)
    finally:
        cap.finish("SUCCESS")
        cap.deactivate()


def _collector(args: argparse.Namespace, tmp: Path) -> None:
    from bench.collector import fill_spool
    from collector.publish import Publisher
    from collector.store import Store
    from collector.tail import SpoolDir

    spool = tmp / "spool"
    fill_spool(spool, args.files, args.lines)
    dbs = Databases(args.database_url)
    try:
        url = dbs.fresh()

        steps = {"read+parse": 0.0, "commit (wall)": 0.0, "commit (CPU)": 0.0, "publish": 0.0}

        async def drain() -> int:
            rows = 0
            async with Store(url, "profile") as store, Publisher(args.redis_url) as publisher:
                files = SpoolDir(spool, await store.load_files())
                files.scan()
                while True:
                    started = time.perf_counter()
                    batch = files.read_batch(20_000, 16 << 20)
                    read, cpu = time.perf_counter(), time.thread_time()
                    steps["read+parse"] += read - started
                    if not batch:
                        break
                    stored = await store.commit(batch)
                    committed = time.perf_counter()
                    steps["commit (wall)"] += committed - read
                    steps["commit (CPU)"] += time.thread_time() - cpu
                    files.commit(batch, stored)
                    await publisher.publish(stored.lines, stored.tasks)
                    steps["publish"] += time.perf_counter() - committed
                    rows += stored.rows
            return rows

        rows = _run(args, asyncio.run, drain())
        assert rows == args.lines, rows
        print(
            "per line: "
            + ", ".join(
                f"{name} {total / args.lines * 1e6:.2f} us" for name, total in steps.items()
            )
        )
    finally:
        dbs.close()


if __name__ == "__main__":
    main()
