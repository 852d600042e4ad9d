"""Benchmark 1: what capturing costs a task per printed line.

The same task prints the same lines (40-200 bytes) each way, interleaved run by run, in two
styles: one f-string per `print` (two writes to `sys.stdout`) and `print(text, i)` (four):

* ``plain``: to a file, no capture (the baseline: ``print`` itself);
* ``fd capture on``: through the shim into its spool file (`TerminalLoggingTask`), as
  configured by default: in a solo or prefork worker that includes file-descriptor capture
  (fd 1/2 through pipes, `capture_shim/fdcapture.py`);
* ``Python level only``: the same with ``TASKLOG_CAPTURE_FD=false`` (a second worker);
* ``Python line writer``: fd capture on, with ``TASKLOG_SHIM_SPEEDUPS=false`` (a third
  worker): the shim as it runs where no C compiler built ``capture_shim._speedups``;
* ``baseline`` (with ``--baseline-src DIR``): the default config, run by a fourth worker from
  that source tree (``PYTHONPATH=DIR``), e.g. a worktree of the commit before a change;
* ``floor``: one ``O_APPEND`` ``os.write`` per line of the very record the shim writes for it,
  made beforehand: the least this design (one write per record) can cost;
* ``seed`` (unless ``--no-seed``): the seed guide's ``DBLogWriter``, one committed INSERT per
  line into the same Postgres.

The shim's cost is captured minus plain, run by run; its targets are ≤ 3 µs per line and, to
the floor measured in the same run, ≤ 1.5x for the default configuration and ≤ 3x for the
Python line writer. By default the tasks run in a real solo-pool Celery
worker; ``--direct`` drives `TaskCapture` and `StreamRouter` in this process instead, at the
Python level, as a task would (no Redis needed).
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
    REPO_ROOT,
    Child,
    Databases,
    Figure,
    children,
    row,
    solo_worker,
    title,
    verdict,
    workdir,
)
from bench.printing import STYLES

TARGET_US = 3.0
#: Shim cost / floor, per way: the default configuration (and Python level only, which does
#: less) ≤ 1.5x, the Python line writer ≤ 3x.
TARGET_FLOOR_RATIO = {"fd": 1.5, "python": 1.5, "pyref": 3.0, "baseline": 1.5}
TARGET_RATIO = 100.0
#: The captured ways: the default, fd capture off, the Python line writer (each its worker).
WAYS = {
    "fd": "fd capture on (default)",
    "python": "Python level only",
    "pyref": "fd capture on, Python line writer",
}
_STYLE_NAMES = {"fstring": 'f-string print (print(f"{text} {i}"))', "multiarg": "print(text, i)"}


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
    p.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        metavar="DIR",
        help="also run the default config from this source tree (PYTHONPATH=DIR), same run",
    )


def run(args: argparse.Namespace) -> dict[str, Figure]:
    title(
        "shim: cost per printed line inside a task"
        + (" (in-process, Python level)" if args.direct else " (solo-pool Celery worker)")
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
        runner: _Direct | _InWorker
        ways = dict(WAYS)
        if args.direct:
            runner = _Direct(spool, tmp)
        else:
            baseline = args.baseline_src.resolve() if args.baseline_src else None
            if baseline is not None:
                ways["baseline"] = f"fd capture on, baseline ({baseline})"
            runner = _InWorker(spool, tmp, args.redis_url, baseline)
            stack.enter_context(runner)
        results: dict[str, list[float]] = {"seed": []}

        def add(key: str, both: tuple[float, float]) -> None:
            results.setdefault(f"wall:{key}", []).append(both[0])
            results.setdefault(f"cpu:{key}", []).append(both[1])

        runner.warm_up(seed_url)
        for i in range(args.runs):
            add("floor", runner.floor(args.lines, i))
            for style in STYLES:
                add(f"plain:{style}", runner.plain(args.lines, i, style))
                for way in ways:
                    if way != "python" and args.direct:
                        continue  # in-process: Python level only
                    add(f"{way}:{style}", runner.captured(args.lines, i, style, way=way))
            if seed_url is not None:
                results["seed"].append(runner.seed(args.seed_lines, i, seed_url))
            _clean(spool)
    figures = {}
    for clock, heading in (
        ("cpu", "CPU time of the task's thread (steady on a shared machine)"),
        ("wall", "wall time (what the task waits, other load included)"),
    ):
        print(f"  -- {heading}", flush=True)
        figures.update(report(clock, results, ways))
    if results["seed"]:
        figures.update(_seed(results, figures, args))
    return figures


def report(
    clock: str, results: dict[str, list[float]], ways: dict[str, str] = WAYS
) -> dict[str, Figure]:
    """The figures of one clock (`cpu` or `wall`), printed, keyed `<clock>:<what>`."""
    us = {
        k[len(clock) + 1 :]: [v / 1000 for v in vs]
        for k, vs in results.items()
        if k.startswith(f"{clock}:")
    }
    floor = Figure("floor: one O_APPEND os.write of the record bytes", "µs/line", us["floor"])
    row(floor.name, floor.text(3))
    figures = {"floor": floor}
    for style in STYLES:
        plain = Figure(f"{_STYLE_NAMES[style]}, plain file", "µs/line", us[f"plain:{style}"])
        row(plain.name, plain.text(3), "baseline")
        figures[f"plain:{style}"] = plain
        for way, label in ways.items():
            if f"{way}:{style}" not in us:
                continue
            captured = Figure(f"  captured, {label}", "µs/line", us[f"{way}:{style}"])
            cost = Figure(
                "    shim cost over no capture",
                "µs/line",
                [c - p for c, p in zip(captured.values, plain.values, strict=True)],
            )
            ratio = Figure(
                "    shim cost / floor",
                "x",
                [c / f for c, f in zip(cost.values, floor.values, strict=True)],
            )
            row(captured.name, captured.text(3))
            row(cost.name, cost.text(3), f"≤ {TARGET_US} µs: {verdict(cost.median <= TARGET_US)}")
            target = TARGET_FLOOR_RATIO[way]
            row(ratio.name, ratio.text(2), f"≤ {target}x: {verdict(ratio.median <= target)}")
            figures.update(
                {
                    f"{way}:{style}": captured,
                    f"cost:{way}:{style}": cost,
                    f"ratio:{way}:{style}": ratio,
                }
            )
    return {f"{clock}:{k}": v for k, v in figures.items()}


def _seed(
    results: dict[str, list[float]], figures: dict[str, Figure], args: argparse.Namespace
) -> dict[str, Figure]:
    plain_median = statistics.median(results["wall:plain:fstring"]) / 1000
    shim_cost = figures.get("wall:cost:fd:fstring", figures["wall:cost:python:fstring"])
    seed = Figure(
        "seed guide: one committed INSERT per line", "µs/line", [v / 1000 for v in results["seed"]]
    )
    seed_cost = Figure(
        "INSERT-per-line cost over no capture", "µs/line", [s - plain_median for s in seed.values]
    )
    times = seed_cost.median / max(shim_cost.median, 1e-9)
    row(seed.name, seed.text(1), f"wall; {args.seed_lines:,} lines per run")
    row(
        "shim cost (default config) vs INSERT-per-line cost",
        f"{times:,.0f}x cheaper",
        f"≥ {TARGET_RATIO:.0f}x: {verdict(times >= TARGET_RATIO)}",
    )
    return {"seed": seed, "seed_cost": seed_cost}


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
        self.floor(2000, 99)
        for style in STYLES:
            self.plain(2000, 99, style)
            self.captured(2000, 99, style, way="python")
        if seed_url is not None:
            self.seed(50, 99, seed_url)

    def floor(self, count: int, seed: int) -> tuple[float, float]:
        from bench.printing import timed_floor

        return timed_floor(count, seed, str(self.tmp))

    def plain(self, count: int, seed: int, style: str = "fstring") -> tuple[float, float]:
        from bench.printing import timed_prints_both

        with (
            open(self.tmp / "plain.txt", "w", encoding="utf-8") as f,
            contextlib.redirect_stdout(f),
        ):
            return timed_prints_both(count, seed, style)

    def captured(
        self, count: int, seed: int, style: str = "fstring", way: str = "python"
    ) -> tuple[float, float]:
        from bench.printing import timed_prints_both
        from capture_shim.capture import TaskCapture, ensure_routing

        ensure_routing()
        task_id = f"bench-{secrets.token_hex(6)}"
        cap = TaskCapture(self.config, task_id, {"task_id": task_id, "name": "bench.direct"})
        cap.activate()
        try:
            return timed_prints_both(count, seed, style)
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
    """The same ways as tasks of `bench.celery_app` in solo-pool workers (fd capture on/off)."""

    def __init__(self, spool: Path, tmp: Path, redis_url: str, baseline: Path | None) -> None:
        self.spool, self.tmp, self.redis_url = spool, tmp, redis_url
        self.baseline = baseline
        self.queue = f"tasklog-bench-{secrets.token_hex(4)}"
        #: Way -> the queue of the worker that runs it.
        self.queues = {way: f"{self.queue}-{way}" for way in WAYS}
        if baseline is not None:
            self.queues["baseline"] = f"{self.queue}-baseline"
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> _InWorker:
        import os

        os.environ["TASKLOG_BENCH_REDIS_URL"] = self.redis_url
        from bench import celery_app

        self.app = celery_app.app
        procs = self._stack.enter_context(children())
        env = {"TASKLOG_SPOOL_DIR": str(self.spool), "TASKLOG_BENCH_REDIS_URL": self.redis_url}
        extras = {
            "fd": {},
            "python": {"TASKLOG_CAPTURE_FD": "false"},
            "pyref": {"TASKLOG_SHIM_SPEEDUPS": "false"},
        }
        if self.baseline is not None:
            extras["baseline"] = {"PYTHONPATH": str(self.baseline)}
        for way, queue in self.queues.items():
            procs.append(
                Child(
                    f"worker-{queue}",
                    solo_worker(queue),
                    {**env, **extras[way]},
                    self.tmp,
                    cwd=self.baseline if way == "baseline" and self.baseline else REPO_ROOT,
                )
            )
        for worker in procs:
            worker.wait_for_log("ready.", timeout=60)
        self._stack.callback(self.app.close)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _call(self, name: str, *args: object, queue: str | None = None) -> float:
        result = self.app.send_task(name, args=args, queue=queue or self.queues["fd"])
        try:
            return float(result.get(timeout=600))
        finally:
            result.forget()

    def _call_both(self, name: str, *args: object, queue: str | None = None) -> tuple[float, float]:
        result = self.app.send_task(name, args=args, queue=queue or self.queues["fd"])
        try:
            wall, cpu = result.get(timeout=600)
            return float(wall), float(cpu)
        finally:
            result.forget()

    def warm_up(self, seed_url: str | None) -> None:
        started = time.monotonic()
        self.floor(2000, 99)
        for style in STYLES:
            self.plain(2000, 99, style)
            for way in self.queues:
                self.captured(2000, 99, style, way=way)
        if seed_url is not None:
            self.seed(50, 99, seed_url)
        if time.monotonic() - started > 30:
            print("  (warm-up was slow: is the machine busy?)", file=sys.stderr)

    def floor(self, count: int, seed: int) -> tuple[float, float]:
        return self._call_both("bench.floor", count, seed, str(self.spool))

    def plain(self, count: int, seed: int, style: str = "fstring") -> tuple[float, float]:
        return self._call_both("bench.plain", count, seed, str(self.tmp / "plain.txt"), style)

    def captured(
        self, count: int, seed: int, style: str = "fstring", way: str = "fd"
    ) -> tuple[float, float]:
        return self._call_both("bench.captured", count, seed, style, queue=self.queues[way])

    def seed(self, count: int, seed: int, url: str) -> float:
        return self._call("bench.seed_db", count, seed, url)
