"""The fleet: 1, 2, 4 and 8 collectors (one spool directory and host name each) into one Postgres.

Each host's spool is pre-written by the shim's own writer (`TaskCapture`, as in
`bench.collector`), ``--lines-per-host`` lines in ``--files-per-host`` task files with task
ids of its own. For each fleet size N, N ``python -m tasklog collector`` processes start at
once against one fresh database; the run is timed from the first "following" until every
task's end is stored. Read at the end, before the collectors stop: the Postgres connections
the database held (sampled every 50 ms during the run), the CPU time of the collectors and of
the Postgres backends serving them (/proc; WAL writer and checkpointer not counted). The
baseline is the same command with one collector, in the same run: aggregate lines/s against
it shows where adding hosts stops adding throughput.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path
from typing import Any

from bench.collector import fill_spool
from bench.common import Child, Databases, Figure, children, python, row, scalar, title, workdir

_ACTIVITY = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
_BACKENDS = (
    "SELECT coalesce(array_agg(pid), '{}') FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
)
_DONE = "SELECT ARRAY[count(completed_at), coalesce(sum(line_count), 0)] FROM tasks"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hosts", default="1,2,4,8", help="comma-separated fleet sizes")
    p.add_argument("--lines-per-host", type=int, default=100_000, help="spool lines per host")
    p.add_argument("--files-per-host", type=int, default=100, help="task files per host")
    p.add_argument("--runs", type=int, default=2, help="runs of each fleet size")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [int(n) for n in args.hosts.split(",")]
    title(
        f"fleet: 1-{max(sizes)} collectors into one Postgres, {args.lines_per_host:,} lines in "
        f"{args.files_per_host} files per host"
    )
    results: dict[int, list[dict[str, float]]] = {n: [] for n in sizes}
    dbs = Databases(args.database_url)
    try:
        with workdir(args.keep) as tmp:
            masters = []
            started = time.monotonic()
            for host in range(max(sizes)):
                master = tmp / f"master{host}"
                fill_spool(master, args.files_per_host, args.lines_per_host, prefix=f"h{host}")
                masters.append(master)
            row("spools written by the shim's writer", f"{time.monotonic() - started:.1f}s")
            for i in range(args.runs):
                for n in sizes:
                    result = _fleet_once(masters[:n], tmp / f"run{i}-{n}", dbs, args)
                    results[n].append(result)
                    _print_run(n, result)
    finally:
        dbs.close()
    return _report(results)


def _fleet_once(
    masters: list[Path], where: Path, dbs: Databases, args: argparse.Namespace
) -> dict[str, float]:
    url = dbs.fresh()
    lines = len(masters) * args.lines_per_host
    files = len(masters) * args.files_per_host
    with children() as procs:
        for host, master in enumerate(masters):
            spool = where / f"spool{host}"
            spool.mkdir(parents=True)
            for name in os.listdir(master):
                os.link(master / name, spool / name)
            env = {
                "TASKLOG_DATABASE_URL": url,
                "TASKLOG_SPOOL_DIR": str(spool),
                "TASKLOG_HOST": f"fleet-host-{host}",
                "TASKLOG_LOG_LEVEL": "INFO",
            }
            procs.append(
                Child(f"collector{host}", [python(), "-m", "tasklog", "collector"], env, where)
            )
        ready = min(child.wait_for_log("following", timeout=120) for child in procs)
        peak = [0]
        stop = threading.Event()
        sampler = threading.Thread(target=_sample, args=(url, peak, stop), daemon=True)
        sampler.start()
        done = _wait_done(url, files, procs)
        stop.set()
        sampler.join()
        backends = [int(pid) for pid in scalar(url, _BACKENDS)]
        pg_cpu = sum(_cpu(pid) for pid in backends)
        collector_cpu = sum(child.cpu_seconds() for child in procs)
        stored = int(scalar(url, _DONE)[1])
    dbs.drop(url)
    if stored != lines:
        raise RuntimeError(f"the fleet stored {stored} lines, expected {lines}")
    return {
        "rate": lines / (done - ready),
        "seconds": done - ready,
        "connections": peak[0],
        "held": len(backends),
        "pg_cpu": pg_cpu,
        "collector_cpu": collector_cpu,
        "lines": lines,
        "load": os.getloadavg()[0],
    }


def _sample(url: str, peak: list[int], stop: threading.Event) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        while not stop.is_set():
            row_ = conn.execute(_ACTIVITY.encode()).fetchone()
            # This sampling connection is one of them.
            peak[0] = max(peak[0], int(row_[0]) - 1 if row_ else 0)
            stop.wait(0.05)


def _wait_done(url: str, files: int, procs: list[Child], stall: float = 120) -> float:
    last, moved = None, time.monotonic()
    while True:
        ended, lines = scalar(url, _DONE)
        if ended == files:
            return time.monotonic()
        if (ended, lines) != last:
            last, moved = (ended, lines), time.monotonic()
        elif time.monotonic() - moved > stall:
            tails = "\n".join(f"{p.name}: {p.log_text()[-500:]}" for p in procs)
            raise RuntimeError(f"the fleet stalled at {last}; logs:\n{tails}")
        time.sleep(0.05)


def _cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _print_run(n: int, r: dict[str, float]) -> None:
    row(
        f"  {n} collector{'s' if n > 1 else ''}: {r['lines']:,.0f} lines",
        f"{r['rate']:,.0f} lines/s in {r['seconds']:.1f}s",
        f"Postgres connections held {r['held']:.0f} (peak {r['connections']:.0f}); CPU s:"
        f" Postgres backends {r['pg_cpu']:.1f}, collectors {r['collector_cpu']:.1f};"
        f" load {r['load']:.1f}",
    )


def _report(results: dict[int, list[dict[str, float]]]) -> dict[str, Any]:
    base = Figure("1 collector", "lines/s", [r["rate"] for r in results[min(results)]])
    row("fleet size", "aggregate lines/s (median, min-max) | x one collector | per Postgres core")
    figures: dict[str, Any] = {}
    for n, runs in results.items():
        rate = Figure(f"{n} collectors", "lines/s", [r["rate"] for r in runs])
        per_core = Figure(
            "per Postgres core", "lines/s", [r["lines"] / max(r["pg_cpu"], 1e-9) for r in runs]
        )
        conns = max(r["connections"] for r in runs)
        held = max(r["held"] for r in runs)
        row(
            f"  {n}",
            f"{rate.text(0)} | {rate.median / base.median:.2f}x | {per_core.median:,.0f}",
            f"Postgres connections held {held:.0f}, peak {conns:.0f}",
        )
        figures[str(n)] = {"rate": rate, "per_pg_core": per_core, "connections": conns}
    return figures
