"""Per-task cost: 1,000 trivial tasks with and without capture, and the collector's CPU per task.

Two prefork workers of `bench/celery_app.py` (2 processes each) on their own queues, on this
host: one with ``TASKLOG_ENABLED=false`` (no capture: the baseline), one capturing into a spool
that a collector on this host stores into a fresh database. Run by run, interleaved, a group of
``--tasks`` trivial tasks (`bench.trivial`, one printed line each: Celery's ``test_large_group``
shape) goes to one worker and the time until the group's results are all in is taken; for the
captured runs, until the collector has also stored every task's end (and, apart, until the
results were in: the workers' own share). The collector's CPU time (user + system, /proc) over
a captured run, divided by the tasks, is its CPU per task file; so is Postgres's (the backends
serving the collector, from /proc), and so are the transactions committed in the database.

Target: the captured wall time at most 10% above the baseline's (``--target``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import (
    Child,
    Databases,
    Figure,
    children,
    python,
    row,
    scalar,
    title,
    verdict,
    wait_for,
    workdir,
)

TARGET = 1.10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", type=int, default=1000, help="tasks per group (1000)")
    parser.add_argument("--runs", type=int, default=5, help="groups per configuration (5)")
    parser.add_argument("--target", type=float, default=TARGET, help="captured/plain bound")
    parser.add_argument(
        "--profile", type=Path, metavar="FILE", help="run the collector under cProfile into FILE"
    )
    parser.add_argument(
        "--spool-in",
        type=Path,
        metavar="DIR",
        help="make the spool directory in DIR (default: the bench's scratch directory; a"
        " file's creation costs what the file system there makes it cost, once per task)",
    )
    parser.add_argument(
        "--collector-nice",
        type=int,
        default=0,
        metavar="N",
        help="run the collector at this niceness (systemd's Nice=): it takes the cores when"
        " the workers leave them idle (0)",
    )


def _worker(queue: str, redis_url: str, env: dict[str, str], log_dir: Path) -> Child:
    argv = [python(), "-m", "celery", "-A", "bench.celery_app", "worker", "-P", "prefork",
            "-c", "2", "-l", "warning", "-Q", queue, "--without-gossip", "--without-mingle",
            "--without-heartbeat", "-n", f"{queue}@%h"]  # fmt: skip
    return Child(queue, argv, {"TASKLOG_BENCH_REDIS_URL": redis_url, **env}, log_dir)


def _postgres_cpu(database: str) -> float:
    """CPU seconds of the Postgres backends serving `database` (the collector's connections;
    /proc of the server's processes must be readable, as it is on one host as root)."""
    import psycopg

    with psycopg.connect(database, autocommit=True) as conn:
        pids = [
            pid
            for (pid,) in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid()"
            )
        ]
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _busy() -> tuple[float, float]:
    """The machine's busy and total CPU time so far, in clock ticks (/proc/stat)."""
    fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    total = sum(fields[:8])  # guest time is already in user
    return total - idle, total


def _busy_share(before: tuple[float, float]) -> float:
    busy, total = _busy()
    return (busy - before[0]) / max(total - before[1], 1.0)


def _file_system(path: Path) -> str:
    found = subprocess.run(
        ["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=False
    )
    return found.stdout.strip() or "?"


def _commits(database: str) -> int:
    """Transactions committed in `database` so far (the statistics lag up to half a second)."""
    return int(
        scalar(
            database,
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
        )
    )


def _ended(database: str) -> int:
    return int(scalar(database, "SELECT count(*) FROM tasks WHERE completed_at IS NOT NULL"))


def run(args: argparse.Namespace) -> None:
    from celery import Celery, group

    title(f"Per-task cost: {args.tasks} trivial tasks, with and without capture")
    client = Celery("bench-client", broker=args.redis_url, backend=args.redis_url)
    databases = Databases(args.database_url)
    plain_s: list[float] = []
    captured_s: list[float] = []
    results_s: list[float] = []
    busy: dict[str, list[float]] = {"pertask-off": [], "pertask-on": []}
    commits: list[int] = []
    collector_cpu: list[float] = []
    postgres_cpu: list[float] = []
    spool: Path | None = None
    try:
        with workdir() as work, children() as started:
            spool = Path(tempfile.mkdtemp(prefix="tasklog-spool-", dir=args.spool_in or work))
            spool.chmod(0o755)
            row("spool directory", f"{spool} ({_file_system(spool)})")
            database = databases.fresh()
            collector = Child(
                "collector",
                [
                    *(["nice", "-n", str(args.collector_nice)] if args.collector_nice else []),
                    python(),
                    *(["-m", "cProfile", "-o", str(args.profile)] if args.profile else []),
                    "-m",
                    "tasklog",
                    "collector",
                ],
                {
                    "TASKLOG_DATABASE_URL": database,
                    "TASKLOG_SPOOL_DIR": str(spool),
                    "TASKLOG_HOST": "bench-pertask",
                    "TASKLOG_LOCK_DIR": str(work),
                },
                work,
            )
            started.append(collector)
            collector.wait_for_log("following")
            off = _worker("pertask-off", args.redis_url, {"TASKLOG_ENABLED": "false"}, work)
            on = _worker("pertask-on", args.redis_url, {"TASKLOG_SPOOL_DIR": str(spool)}, work)
            started += [off, on]
            for queue in ("pertask-off", "pertask-on"):  # warm: pools forked, app loaded
                client.send_task("bench.trivial", args=(0,), queue=queue).get(timeout=120)
            stored = 0
            for _ in range(args.runs):
                for queue in ("pertask-off", "pertask-on"):
                    sig = group(
                        client.signature("bench.trivial", args=(i,), queue=queue)
                        for i in range(args.tasks)
                    )
                    cpu0, pg0 = collector.cpu_seconds(), _postgres_cpu(database)
                    xacts0 = _commits(database)
                    busy0 = _busy()
                    began = time.monotonic()
                    result = sig.apply_async()
                    result.get(timeout=600)
                    if queue == "pertask-on":
                        results_s.append(time.monotonic() - began)
                        stored += args.tasks
                        wait_for(
                            lambda want=stored + 1: _ended(database) >= want,  # + the warm-up
                            600,
                            "every task's end stored",
                            collector,
                        )
                        captured_s.append(time.monotonic() - began)
                        busy[queue].append(_busy_share(busy0))
                        collector_cpu.append(collector.cpu_seconds() - cpu0)
                        postgres_cpu.append(_postgres_cpu(database) - pg0)
                        time.sleep(1.2)  # a backend reports its statistics once a second
                        commits.append(_commits(database) - xacts0)
                    else:
                        plain_s.append(time.monotonic() - began)
                        busy[queue].append(_busy_share(busy0))
                    result.forget()
    finally:
        databases.close()
        client.close()
        if args.spool_in and spool is not None:
            shutil.rmtree(spool, ignore_errors=True)
    plain, captured = Figure("plain", "s", plain_s), Figure("captured", "s", captured_s)
    ratios = [c / p for c, p in zip(captured_s, plain_s, strict=True)]
    per_task_ms = Figure("collector", "ms", [c / args.tasks * 1000 for c in collector_cpu])
    pg_ms = Figure("postgres", "ms", [c / args.tasks * 1000 for c in postgres_cpu])
    row("no capture (TASKLOG_ENABLED=false)", plain.text())
    row("captured, until every end is stored", captured.text())
    row("captured, until the results are in", Figure("results", "s", results_s).text())
    ratio = statistics.median(ratios)
    row(
        "captured / no capture",
        f"{ratio:.2f}x (runs {min(ratios):.2f}-{max(ratios):.2f})",
        f"target <= {args.target:.2f}x {verdict(ratio <= args.target)}",
    )
    for queue, label in (("pertask-off", "no capture"), ("pertask-on", "captured")):
        share = Figure(label, "%", [b * 100 for b in busy[queue]])
        row(f"the machine's cores busy, {label}", share.text(0), "all processes, /proc/stat")
    row("collector CPU per task file", per_task_ms.text(3))
    row("Postgres CPU per task file", pg_ms.text(3), "the collector's backends")
    per_file = Figure("commits", "", [c / args.tasks for c in commits])
    row("transactions per task file", per_file.text(), "all of the database's")
    if args.profile:
        import pstats

        print(f"  collector profile ({args.profile}), by own time:")
        pstats.Stats(str(args.profile)).sort_stats("tottime").print_stats(20)
