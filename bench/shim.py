"""Benchmark 1: what capturing costs a task per printed line.

The same task prints the same lines (40-200 bytes) three ways, interleaved run by run:

* ``plain``: to a file, no capture (the floor: ``print`` itself);
* ``captured``: through the shim into its spool file (`TerminalLoggingTask`), as configured
  by default: in a solo or prefork worker that includes file-descriptor capture (fd 1/2
  through pipes, `capture_shim/fdcapture.py`), which looks at the pipes once per print;
* ``captured, Python level``: the same with ``TASKLOG_CAPTURE_FD=false`` (a second worker);
* ``seed``: the seed guide's ``DBLogWriter``, one committed INSERT per line into the same
  Postgres.

By default the tasks run in a real solo-pool Celery worker; ``--direct`` drives
`TaskCapture` and `StreamRouter` in this process instead, as a task would (no Redis needed).
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import statistics
import sys
import time
from pathlib import Path

from bench.common import (
    Child,
    Databases,
    Figure,
    children,
    python,
    row,
    title,
    verdict,
    workdir,
)

TARGET_US = 3.0
TARGET_RATIO = 100.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lines", type=int, default=100_000, help="lines per captured/plain run")
    p.add_argument(
        "--seed-lines", type=int, default=2_000, help="lines per seed-guide (INSERT per line) run"
    )
    p.add_argument("--runs", type=int, default=5, help="runs of each way")
    p.add_argument(
        "--direct", action="store_true", help="no Celery worker: drive TaskCapture in this process"
    )
    p.add_argument("--no-seed", action="store_true", help="skip the INSERT-per-line way")


def run(args: argparse.Namespace) -> dict[str, Figure]:
    title(
        "shim: cost per printed line inside a task"
        + (" (in-process)" if args.direct else " (solo-pool Celery worker)")
    )
    with workdir() as tmp, contextlib.ExitStack() as stack:
        spool = tmp / "spool"
        spool.mkdir()
        seed_url = None
        if not args.no_seed:
            dbs = Databases(args.database_url)
            stack.callback(dbs.close)
            seed_url = dbs.fresh()
            import psycopg

            from bench.printing import SEED_TABLE

            with psycopg.connect(seed_url, autocommit=True) as conn:
                conn.execute(SEED_TABLE.encode())
        if args.direct:
            runner = _Direct(spool, tmp)
        else:
            runner = _InWorker(spool, tmp, args.redis_url)
            stack.enter_context(runner)
        results: dict[str, list[float]] = {
            "plain": [],
            "captured": [],
            "python_level": [],
            "seed": [],
        }
        runner.warm_up(seed_url)
        for i in range(args.runs):
            results["plain"].append(runner.plain(args.lines, i))
            results["captured"].append(runner.captured(args.lines, i))
            if not args.direct:
                results["python_level"].append(runner.captured(args.lines, i, fd=False))
            if seed_url is not None:
                results["seed"].append(runner.seed(args.seed_lines, i, seed_url))
            _clean(spool)
    return report(results, args)


def report(results: dict[str, list[float]], args: argparse.Namespace) -> dict[str, Figure]:
    us = {k: [v / 1000 for v in values] for k, values in results.items()}
    plain = Figure("plain print to a file", "µs/line", us["plain"])
    captured = Figure("captured by the shim", "µs/line", us["captured"])
    cost = Figure(
        "shim cost over no capture",
        "µs/line",
        [c - p for c, p in zip(us["captured"], us["plain"], strict=True)],
    )
    row(plain.name, plain.text(3))
    row(captured.name, captured.text(3), f"{captured.median / plain.median:.1f}x plain")
    row(cost.name, cost.text(3), f"target ≤ {TARGET_US} µs: {verdict(cost.median <= TARGET_US)}")
    figures = {"plain": plain, "captured": captured, "shim_cost": cost}
    if us["python_level"]:
        py = Figure("captured, Python level only (CAPTURE_FD=false)", "µs/line", us["python_level"])
        py_cost = Figure(
            "  its cost over no capture",
            "µs/line",
            [c - p for c, p in zip(us["python_level"], us["plain"], strict=True)],
        )
        row(py.name, py.text(3))
        row(
            py_cost.name,
            py_cost.text(3),
            f"target ≤ {TARGET_US} µs: {verdict(py_cost.median <= TARGET_US)}",
        )
        figures.update(python_level=py, python_level_cost=py_cost)
    if us["seed"]:
        plain_median = statistics.median(us["plain"])
        seed = Figure("seed guide: one committed INSERT per line", "µs/line", us["seed"])
        seed_cost = Figure(
            "INSERT-per-line cost over no capture",
            "µs/line",
            [s - plain_median for s in us["seed"]],
        )
        ratio = seed_cost.median / max(cost.median, 1e-9)
        row(seed.name, seed.text(1), f"{args.seed_lines:,} lines per run")
        row(
            "shim cost vs INSERT-per-line cost",
            f"{ratio:,.0f}x cheaper",
            f"target ≥ {TARGET_RATIO:.0f}x: {verdict(ratio >= TARGET_RATIO)}",
        )
        figures.update(seed=seed, seed_cost=seed_cost)
    return figures


def _clean(spool: Path) -> None:
    for path in spool.iterdir():
        path.unlink()


class _Direct:
    """The task's side of the shim, without Celery: routing, a TaskCapture, prints."""

    def __init__(self, spool: Path, tmp: Path) -> None:
        from capture_shim.config import ShimConfig

        self.config = ShimConfig(
            enabled=True,
            spool_dir=str(spool),
            max_lines=1000,
            max_line_bytes=16384,
            record_args=False,
        )
        self.tmp = tmp

    def warm_up(self, seed_url: str | None) -> None:
        self.plain(2000, 99)
        self.captured(2000, 99)
        if seed_url is not None:
            self.seed(50, 99, seed_url)

    def plain(self, count: int, seed: int) -> float:
        from bench.printing import timed_prints

        with (
            open(self.tmp / "plain.txt", "w", encoding="utf-8") as f,
            contextlib.redirect_stdout(f),
        ):
            return timed_prints(count, seed)

    def captured(self, count: int, seed: int, fd: bool = True) -> float:
        from bench.printing import timed_prints
        from capture_shim.capture import TaskCapture, ensure_routing

        ensure_routing()
        task_id = f"bench-{secrets.token_hex(6)}"
        cap = TaskCapture(self.config, task_id, {"task_id": task_id, "name": "bench.direct"})
        cap.activate()
        try:
            return timed_prints(count, seed)
        finally:
            cap.finish("SUCCESS")
            cap.deactivate()

    def seed(self, count: int, seed: int, url: str) -> float:
        import psycopg

        from bench.printing import DBLogWriter, timed_prints

        with psycopg.connect(url, autocommit=True) as conn:
            writer = DBLogWriter(conn, f"bench-{secrets.token_hex(6)}", "stdout")
            with contextlib.redirect_stdout(writer):  # type: ignore[type-var]
                per_line = timed_prints(count, seed)
                writer.flush()
        return per_line


class _InWorker:
    """The same three ways as tasks of `bench.celery_app` in a solo-pool worker."""

    def __init__(self, spool: Path, tmp: Path, redis_url: str) -> None:
        self.spool, self.tmp, self.redis_url = spool, tmp, redis_url
        self.queue = f"tasklog-bench-{secrets.token_hex(4)}"
        self.queue_py = self.queue + "-py"
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> _InWorker:
        import os

        os.environ["TASKLOG_BENCH_REDIS_URL"] = self.redis_url
        from bench import celery_app

        self.app = celery_app.app
        procs = self._stack.enter_context(children())
        env = {"TASKLOG_SPOOL_DIR": str(self.spool), "TASKLOG_BENCH_REDIS_URL": self.redis_url}
        for queue, extra in ((self.queue, {}), (self.queue_py, {"TASKLOG_CAPTURE_FD": "false"})):
            procs.append(
                Child(
                    f"worker-{queue}",
                    [
                        python(),
                        "-m",
                        "celery",
                        "-A",
                        "bench.celery_app",
                        "worker",
                        "-P",
                        "solo",
                        "-l",
                        "info",
                        "-Q",
                        queue,
                        "--without-gossip",
                        "--without-mingle",
                        "--without-heartbeat",
                        "-n",
                        f"{queue}@%h",
                    ],
                    {**env, **extra},
                    self.tmp,
                )
            )
        for worker in procs:
            worker.wait_for_log("ready.", timeout=60)
        self._stack.callback(self.app.close)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _call(self, name: str, *args: object, queue: str | None = None) -> float:
        result = self.app.send_task(name, args=args, queue=queue or self.queue)
        try:
            return float(result.get(timeout=600))
        finally:
            result.forget()

    def warm_up(self, seed_url: str | None) -> None:
        started = time.monotonic()
        self.plain(2000, 99)
        self.captured(2000, 99)
        self.captured(2000, 99, fd=False)
        if seed_url is not None:
            self.seed(50, 99, seed_url)
        if time.monotonic() - started > 30:
            print("  (warm-up was slow: is the machine busy?)", file=sys.stderr)

    def plain(self, count: int, seed: int) -> float:
        return self._call("bench.plain", count, seed, str(self.tmp / "plain.txt"))

    def captured(self, count: int, seed: int, fd: bool = True) -> float:
        return self._call("bench.captured", count, seed, queue=self.queue if fd else self.queue_py)

    def seed(self, count: int, seed: int, url: str) -> float:
        return self._call("bench.seed_db", count, seed, url)
