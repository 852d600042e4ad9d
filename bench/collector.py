"""Benchmark 2: collector throughput from a pre-filled spool, and its memory with a backlog.

The spool is written by the shim's own writer (`TaskCapture`), one file per task. Each run
hard-links it into a fresh spool directory, spawns ``python -m tasklog collector`` against a
fresh database, and times until every task's end is stored: from the process's spawn (the
figure a user meets: imports, migrations and the first scan count) and, beside it, from its
"following" log line. Baselines on the same rows, each run in the same round as the collector
it is compared with: a raw ``COPY`` with ``psql`` (the practical limit), a ``COPY`` issued from
Python over the collector's own driver (psycopg 3 ``cursor.copy()``, the rows' COPY text written
in 1 MB blocks: no per-row work in Python), both timed from their process's spawn, and one
committed INSERT per line (a sample, extrapolated). ``--baseline-src DIR`` also
runs the collector of another source tree (e.g. a worktree of the previous commit) in the same
run, interleaved, for a before/after on the same machine state. ``--backlog-gb 1`` is the
memory mode: one run over a spool of that size.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.common import (
    REPO_ROOT,
    Child,
    Databases,
    Figure,
    children,
    python,
    row,
    sample_lines,
    scalar,
    title,
    verdict,
    wait_for,
    workdir,
)

TARGET_RATE = 200_000
#: The collector from spawn against each COPY baseline of the same round, in every run.
TARGET_COPY_RATIO = 1.0
TARGET_RSS_MB = 150
_COLUMNS = "task_id, seq, ts, stream, level, message"
#: A head+tail bound beyond any file's length (and within the schema's integer).
_KEEP_ALL = 2_000_000_000


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lines", type=int, default=1_000_000, help="lines in the spool")
    p.add_argument("--files", type=int, default=20, help="spool files (tasks)")
    p.add_argument("--runs", type=int, default=3, help="runs of each way")
    p.add_argument(
        "--insert-sample",
        type=int,
        default=10_000,
        help="lines per INSERT-per-line run (extrapolated)",
    )
    p.add_argument(
        "--backlog-gb",
        type=float,
        default=0.0,
        help="memory mode: one collector run over a spool backlog of this size",
    )
    p.add_argument("--no-redis", action="store_true", help="run the collector without Redis")
    p.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        metavar="DIR",
        help="also run the collector of this source tree (PYTHONPATH=DIR), same run",
    )
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")


def run(args: argparse.Namespace) -> dict[str, Figure]:
    if args.backlog_gb:
        return run_backlog(args)
    title(f"collector: {args.lines:,} lines in {args.files:,} spool files -> Postgres")
    dbs = Databases(args.database_url)
    ways: dict[str, Path | None] = {"collector": None}
    if args.baseline_src is not None:
        ways["baseline"] = args.baseline_src.resolve()
    results: dict[str, list[dict[str, float]]] = {way: [] for way in ways}
    for source in ways.values():
        compile_bytecode(source)
    rates: dict[str, list[float]] = {"copy": [], "pycopy": [], "insert": []}
    try:
        with workdir(args.keep) as tmp:
            master = tmp / "master"
            started = time.monotonic()
            nbytes = fill_spool(master, args.files, args.lines)
            row(
                "spool written by the shim's writer",
                f"{nbytes / 1e6:,.0f} MB in {time.monotonic() - started:.1f}s",
            )
            copy_file = tmp / "rows.copy"
            days = copy_rows(master, copy_file)
            for i in range(args.runs):
                # Interleaved, so that each way meets the machine in the same moods.
                for way, source in ways.items():
                    result = collect_once(
                        master, tmp / f"{way}{i}", dbs, args, args.lines, source=source
                    )
                    results[way].append(result)
                    print(
                        f"  run {i + 1}: {way}: {result['wall']:.2f}s from spawn "
                        f"({result['startup']:.2f}s to 'following')",
                        flush=True,
                    )
                rates["copy"].append(psql_copy(copy_file, days, dbs, args.lines))
                rates["pycopy"].append(python_copy(copy_file, days, dbs, args.lines))
                rates["insert"].append(insert_per_line(copy_file, days, dbs, args.insert_sample))
    finally:
        dbs.close()
    copy = Figure("raw COPY with psql, same rows", "lines/s", rates["copy"])
    pycopy = Figure("COPY from Python (psycopg cursor.copy), same rows", "lines/s", rates["pycopy"])
    insert = Figure("one committed INSERT per line (extrapolated)", "lines/s", rates["insert"])
    figures = {"copy": copy, "pycopy": pycopy, "insert": insert}
    for way, source in ways.items():
        name = "collector" if source is None else f"baseline collector ({source})"
        figures.update(_report_way(way, name, results[way], rates["copy"], rates["pycopy"]))
    row(copy.name, copy.text(0), "from psql's spawn")
    row(pycopy.name, pycopy.text(0), "from its process's spawn")
    row(insert.name, insert.text(0), f"sample of {args.insert_sample:,} lines per run")
    start = figures["collector"]
    row("collector (from spawn) / INSERT per line", f"{start.median / insert.median:,.0f}x")
    return figures


def _report_way(
    way: str,
    name: str,
    results: list[dict[str, float]],
    copy_rates: list[float],
    pycopy_rates: list[float],
) -> dict[str, Figure]:
    """The figures of one collector: from spawn, from "following", and per-run COPY ratios."""
    spawn = Figure(f"{name}, from process spawn", "lines/s", [r["rate"] for r in results])
    follow = Figure(f"{name}, from 'following'", "lines/s", [r["rate_following"] for r in results])
    # Each run's ratio to the COPYs of the same round: they met the same machine.
    ratio = Figure("", "x", [r["rate"] / c for r, c in zip(results, copy_rates, strict=True)])
    ratio_py = Figure("", "x", [r["rate"] / c for r, c in zip(results, pycopy_rates, strict=True)])
    ratio_follow = Figure(
        "", "x", [r["rate_following"] / c for r, c in zip(results, copy_rates, strict=True)]
    )
    row(spawn.name, spawn.text(0))
    for label, figure in (("raw COPY (psql)", ratio), ("COPY from Python", ratio_py)):
        # Every run, not the median: a run below the baseline is a miss.
        target = min(figure.values) >= TARGET_COPY_RATIO
        row(
            f"  / {label} of the same round",
            figure.text(2),
            f"target >= {TARGET_COPY_RATIO}x from spawn in every run: {verdict(target)}"
            if way == "collector"
            else "",
        )
        row("    per run", " ".join(f"{value:.2f}" for value in figure.values))
    row(follow.name, follow.text(0))
    row("  / raw COPY of the same round", ratio_follow.text(2))
    row(
        "  start-up (spawn to 'following')",
        Figure("", "s", [r["startup"] for r in results]).text(2),
    )
    row("  wall time from spawn", Figure("", "s", [r["wall"] for r in results]).text(2))
    row(
        "  collector CPU per line",
        Figure("", "us", [r["cpu_us_per_line"] for r in results]).text(2),
    )
    row("  collector peak RSS", Figure("", "MB", [r["rss_peak_mb"] for r in results]).text(1))
    return {
        way: spawn,
        f"{way}_following": follow,
        f"{way}_copy_ratio": ratio,
        f"{way}_pycopy_ratio": ratio_py,
        f"{way}_copy_ratio_following": ratio_follow,
    }


def run_backlog(args: argparse.Namespace) -> dict[str, Figure]:
    target = int(args.backlog_gb * 1e9)
    per_line = 185  # bytes per spool record, on average, for 40-200 byte lines
    lines = target // per_line
    files = max(args.files, 1)
    title(
        f"collector memory: a {args.backlog_gb:g} GB spool backlog "
        f"(~{lines:,} lines in {files:,} files)"
    )
    dbs = Databases(args.database_url)
    compile_bytecode(None)
    try:
        with workdir(args.keep) as tmp:
            master = tmp / "master"
            started = time.monotonic()
            nbytes = fill_spool(master, files, lines)
            row(
                "spool written by the shim's writer",
                f"{nbytes / 1e9:,.2f} GB in {time.monotonic() - started:.0f}s",
            )
            result = collect_once(master, tmp / "run", dbs, args, lines, link=False)
    finally:
        dbs.close()
    peak = Figure("collector peak RSS (VmHWM)", "MB", [result["rss_peak_mb"]])
    rate = Figure("collector throughput over the backlog", "lines/s", [result["rate"]])
    row(
        peak.name,
        peak.text(1),
        f"target <= {TARGET_RSS_MB} MB: {verdict(peak.median <= TARGET_RSS_MB)}",
    )
    row(rate.name, rate.text(0))
    return {"rss": peak, "backlog_rate": rate}


def compile_bytecode(source: Path | None) -> None:
    """Compile what the collector imports (of the tree `source`, or this one) to bytecode, as
    an install by pip does: timed from spawn, a collector should not compile its imports (~1 s
    of CPU here) because the environment says not to write bytecode (PYTHONDONTWRITEBYTECODE,
    as in this project's Dockerfile) or the installer skipped it (uv's default)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    if source is not None:
        env["PYTHONPATH"] = str(source)
    subprocess.run(
        [python(), "-c", "import tasklog.cli, collector.daemon, psycopg"],
        env=env,
        cwd=source or REPO_ROOT,
        check=True,
    )


# -- the spool ---------------------------------------------------------------------------------


def fill_spool(directory: Path, files: int, lines: int, prefix: str = "bench") -> int:
    """Write `lines` lines across `files` task spool files with the shim; returns bytes.

    Task ids are `prefix`-NNNNNNN: spools for several hosts of one database need their own."""
    directory.mkdir(parents=True, exist_ok=True)
    workers = min(2, os.cpu_count() or 1)
    share = [(directory, i, workers, files, lines, prefix) for i in range(workers)]
    # Spawned, not forked: a fork of a process with threads (pytest's, after the integration
    # tests) may copy a lock another thread holds, and the child then waits for ever.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_fill_part, share))
    return sum(p.stat().st_size for p in directory.iterdir())


def _fill_part(job: tuple[Path, int, int, int, int, str]) -> None:
    directory, part, step, files, lines, prefix = job
    from capture_shim.capture import TaskCapture
    from capture_shim.config import ShimConfig

    # max_lines beyond any file: every line is kept, none trimmed by the head+tail bound.
    config = ShimConfig(
        enabled=True,
        spool_dir=str(directory),
        max_lines=_KEEP_ALL,
        max_line_bytes=16384,
        record_args=False,
    )
    pool = sample_lines(20_011, seed=part + 7)
    k = 0
    for f in range(part, files, step):
        n = lines // files + (1 if f < lines % files else 0)
        task_id = f"{prefix}-{f:07d}"
        cap = TaskCapture(
            config,
            task_id,
            {
                "task_id": task_id,
                "name": "bench.fill",
                "host": "bench",
                "pid": os.getpid(),
                "max_lines": _KEEP_ALL,
            },
        )
        for _ in range(n):
            cap.emit("stdout", pool[k % len(pool)])
            k += 1
        cap.finish("SUCCESS")


def copy_rows(spool: Path, out: Path) -> set[str]:
    """The rows the collector would store, as a COPY text file; returns the days they span."""
    days: set[str] = set()
    with out.open("w", encoding="utf-8") as dst:
        for path in spool.iterdir():
            task_id = None
            for raw in path.read_bytes().splitlines():
                rec = json.loads(raw)
                if rec["k"] == "start":
                    task_id = rec["task_id"]
                elif rec["k"] == "line":
                    ts = datetime.fromtimestamp(rec["t"], UTC)
                    days.add(ts.date().isoformat())
                    dst.write(
                        f"{task_id}\t{rec['n']}\t{ts.isoformat()}\t{rec['s']}\t\\N\t"
                        f"{_copy_escape(rec['m'])}\n"
                    )
    return days


def _copy_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _partitions(url: str, days: set[str]) -> None:
    import psycopg
    from psycopg import sql

    stmt = "CREATE TABLE IF NOT EXISTS {} PARTITION OF lines FOR VALUES FROM ({}) TO ({})"
    with psycopg.connect(url, autocommit=True) as conn:
        for day in sorted(days):
            start = datetime.fromisoformat(day).date()
            conn.execute(
                sql.SQL(stmt).format(
                    sql.Identifier(f"lines_{start:%Y%m%d}"),
                    sql.Literal(f"{start.isoformat()} 00:00:00+00"),
                    sql.Literal(f"{start + timedelta(days=1)} 00:00:00+00"),
                )
            )


# -- the ways ----------------------------------------------------------------------------------


def collect_once(
    master: Path,
    spool: Path,
    dbs: Databases,
    args: argparse.Namespace,
    lines: int,
    link: bool = True,
    source: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> dict[str, float]:
    """One collector run over a copy of the spool (of the code in `source` if given):
    throughput from spawn and from "following", start-up, peak RSS, CPU per line."""
    spool.mkdir()
    names = [p.name for p in master.iterdir()]
    for name in names:
        if link:
            os.link(master / name, spool / name)
        else:
            os.rename(master / name, spool / name)
    url = dbs.fresh()
    env = {
        "TASKLOG_DATABASE_URL": url,
        "TASKLOG_SPOOL_DIR": str(spool),
        "TASKLOG_HOST": "bench",
        "TASKLOG_LOG_LEVEL": "INFO",
        # What it imports later than `compile_bytecode` looked is compiled once, not each run.
        "PYTHONDONTWRITEBYTECODE": "",
    }
    if not args.no_redis:
        env["TASKLOG_REDIS_URL"] = args.redis_url
    if source is not None:
        env["PYTHONPATH"] = str(source)
    env.update(extra_env or {})
    with children() as procs:
        spawned = time.monotonic()
        # `-m` puts the working directory first on sys.path: for another tree, run in it.
        proc = Child(
            f"collector-{spool.name}",
            [python(), "-m", "tasklog", "collector"],
            env,
            spool.parent,
            cwd=source or REPO_ROOT,
        )
        procs.append(proc)
        ready = proc.wait_for_log("following", timeout=120)
        done = _wait_stored(url, len(names), proc)
        stored = scalar(url, "SELECT coalesce(sum(line_count), 0) FROM tasks")
        peak = proc.rss_peak_kb() / 1024
        cpu = proc.cpu_seconds()
    dbs.drop(url)
    shutil.rmtree(spool, ignore_errors=True)
    if stored != lines:
        raise RuntimeError(f"collector stored {stored} lines, expected {lines}")
    return {
        "rate": lines / (done - spawned),
        "rate_following": lines / (done - ready),
        "startup": ready - spawned,
        "wall": done - spawned,
        "rss_peak_mb": peak,
        "cpu_us_per_line": cpu / lines * 1e6,
    }


def _wait_stored(url: str, files: int, proc: Child, stall: float = 60) -> float:
    """Wait until every task's end is stored; fails if nothing moves for `stall` seconds."""
    last, moved = None, time.monotonic()

    def stored() -> bool:
        nonlocal last, moved
        ended, lines = scalar(
            url, "SELECT ARRAY[count(completed_at), coalesce(sum(line_count), 0)] FROM tasks"
        )
        if (ended, lines) != last:
            last, moved = (ended, lines), time.monotonic()
        elif time.monotonic() - moved > stall:
            raise RuntimeError(
                f"collector stalled at {last} (tasks ended, lines); log tail:\n"
                + "\n".join(proc.log_text().splitlines()[-20:])
            )
        return bool(ended == files)

    return wait_for(stored, 24 * 3600, "every task stored", proc, interval=0.05)


def psql_copy(copy_file: Path, days: set[str], dbs: Databases, lines: int) -> float:
    """Lines per second of `\\copy` into the same (fresh) lines table."""
    copy = f"\\copy lines ({_COLUMNS}) FROM '{copy_file}'"
    argv = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "{url}", "-c", copy]
    return _timed_copy(argv, "COPY", days, dbs, lines)


def _timed_copy(argv: list[str], what: str, days: set[str], dbs: Databases, lines: int) -> float:
    """Lines per second of `argv` (`{url}` standing for a fresh database's) from its spawn to
    its exit, checked to have stored every line."""
    url = dbs.fresh()
    _partitions(url, days)
    started = time.monotonic()
    subprocess.run([url if arg == "{url}" else arg for arg in argv], check=True)
    elapsed = time.monotonic() - started
    stored = scalar(url, "SELECT count(*) FROM lines")
    dbs.drop(url)
    if stored != lines:
        raise RuntimeError(f"{what} stored {stored} lines, expected {lines}")
    return lines / elapsed


#: The COPY from Python: the rows' COPY text through psycopg 3's `cursor.copy()` in 1 MB blocks.
_PYTHON_COPY = """
import sys
import psycopg

url, path, columns = sys.argv[1:]
with psycopg.connect(url) as conn, conn.cursor() as cur, open(path, "rb") as src:
    with cur.copy(f"COPY lines ({columns}) FROM STDIN") as copy:
        while block := src.read(1 << 20):
            copy.write(block)
"""


def python_copy(copy_file: Path, days: set[str], dbs: Databases, lines: int) -> float:
    """Lines per second of a COPY issued from Python (psycopg 3, the collector's driver) of the
    same rows into the same (fresh) lines table, from the spawn of its process to its exit."""
    argv = [python(), "-c", _PYTHON_COPY, "{url}", str(copy_file), _COLUMNS]
    return _timed_copy(argv, "COPY from Python", days, dbs, lines)


def insert_per_line(copy_file: Path, days: set[str], dbs: Databases, sample: int) -> float:
    """Lines per second of one committed INSERT per line, over the first `sample` rows."""
    import psycopg

    rows = []
    with copy_file.open(encoding="utf-8") as src:
        for line in src:
            task_id, seq, ts, stream, _, message = line.rstrip("\n").split("\t")
            rows.append((task_id, int(seq), ts, stream, message))
            if len(rows) >= sample:
                break
    url = dbs.fresh()
    _partitions(url, days)
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.monotonic()
        for r in rows:
            conn.execute(
                "INSERT INTO lines (task_id, seq, ts, stream, level, message) "
                "VALUES (%s, %s, %s, %s, NULL, %s)",
                r,
            )
        elapsed = time.monotonic() - started
    dbs.drop(url)
    return len(rows) / elapsed
