"""Benchmark: what one hostile task costs the others (issue 20), each against its baseline.

Isolation: a real ``tasklog api`` (search pool of 2, regex timeout long enough to outlast the
run) times sequential GETs of the task list, a task's detail and ``/healthz``, first quiet,
then while twice as many catastrophic regex searches as the search pool holds run
(``^(((a+)\\3)+)+\\1b`` over a stored line of a's and a b). Side by side: p50 and p99, and the
ratio.

Fairness: a real collector; the time from writing a new task's spool file to its line being
in Postgres, first on an idle spool, then while three big backlogs drain (one of them named
with ns=0, which used to go first). Side by side, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from bench.common import (
    Child,
    Databases,
    Figure,
    children,
    percentile,
    python,
    row,
    scalar,
    title,
    wait_for,
    workdir,
)
from capture_shim import spool
from capture_shim.capture import TaskCapture
from capture_shim.config import ShimConfig

CATASTROPHIC = r"^(((a+)\3)+)+\1b"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=100, help="timed GETs per route and phase")
    p.add_argument("--backlog-lines", type=int, default=200_000, help="lines of each backlog")
    p.add_argument("--newcomers", type=int, default=5, help="new tasks timed per phase")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")


def run(args: argparse.Namespace) -> dict[str, Figure]:
    databases = Databases(args.database_url)
    try:
        with workdir(args.keep) as work:
            figures = isolation(args, databases, work)
            figures.update(fairness(args, databases, work))
    finally:
        databases.close()
    return figures


# -- isolation ---------------------------------------------------------------------------------


def _record(**fields: object) -> bytes:
    return (json.dumps(fields) + "\n").encode()


def _task_file(spool_dir: Path, task_id: str, messages: list[str], ns: int | None = None) -> None:
    now = time.time()
    data = _record(k="start", v=spool.VERSION, t=now, task_id=task_id, name="bench")
    for n, message in enumerate(messages, 1):
        data += _record(k="line", n=n, t=now, s="stdout", m=message)
    data += _record(k="end", t=now, state="SUCCESS", errors=0)
    ns = time.time_ns() if ns is None else ns
    (spool_dir / f"{task_id}.{os.getpid()}.{ns}{spool.SUFFIX}").write_bytes(data)


def _stored(url: str, task_id: str, lines: int = 1) -> bool:
    count = scalar(url, "SELECT count(*) FROM lines WHERE task_id = %s", [task_id])
    return bool(count and count >= lines)


def _get(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as response:
        response.read()
        assert response.status == 200, response.status
    return (time.perf_counter() - started) * 1000


def _searching(url: str, done: threading.Event) -> None:
    try:
        with urllib.request.urlopen(url, timeout=600) as response:
            response.read()
    except (urllib.error.URLError, OSError):
        pass  # refused beyond the pool (503), or cut off at the end: either way it pressed
    finally:
        done.set()


def isolation(args: argparse.Namespace, databases: Databases, work: Path) -> dict[str, Figure]:
    title("isolation: the list, a detail and /healthz while catastrophic regexes run")
    url = databases.fresh()
    spool_dir = work / "spool-isolation"
    spool_dir.mkdir()
    figures: dict[str, Figure] = {}
    with children() as started:
        collector = Child(
            "collector-isolation",
            [python(), "-m", "tasklog", "collector"],
            {"TASKLOG_DATABASE_URL": url, "TASKLOG_SPOOL_DIR": str(spool_dir)},
            work,
        )
        started.append(collector)
        collector.wait_for_log("following")
        _task_file(spool_dir, "regex-bait", ["a" * 60 + "b"])
        _task_file(spool_dir, "good", ["a good line"])
        wait_for(lambda: _stored(url, "good") and _stored(url, "regex-bait"), 60, "stored")
        port = _free_port()
        api = Child(
            "api-isolation",
            [python(), "-m", "tasklog", "api"],
            {
                "TASKLOG_DATABASE_URL": url,
                "TASKLOG_API_PORT": str(port),
                "TASKLOG_API_SEARCH_CONNECTIONS": "2",
                "TASKLOG_API_REGEX_TIMEOUT": "300",
            },
            work,
        )
        started.append(api)
        api.wait_for_log("listening on http")
        base = f"http://127.0.0.1:{port}/tasklog"
        routes = {"list": "/api/tasks/", "detail": "/api/tasks/good/", "health": "/healthz"}

        def timed() -> dict[str, list[float]]:
            return {
                name: [_get(base + path) for _ in range(args.requests)]
                for name, path in routes.items()
            }

        quiet = timed()
        query = urllib.parse.urlencode({"q": CATASTROPHIC, "regex": "1"})
        done = [threading.Event() for _ in range(4)]
        for event in done:
            threading.Thread(
                target=_searching, args=(f"{base}/api/search/?{query}", event), daemon=True
            ).start()
        wait_for(lambda: _running_regexes(url) >= 2, 30, "the regexes running in Postgres")
        pressed = timed()
        still = _running_regexes(url)
        api.stop()  # ends the searches (their clients go with the API's sockets)
        for name in routes:
            for p in (50, 99):
                a, b = percentile(quiet[name], p), percentile(pressed[name], p)
                figures[f"{name} p{p} quiet"] = Figure(f"{name} p{p} quiet", "ms", [a])
                figures[f"{name} p{p} regexes"] = Figure(f"{name} p{p} regexes", "ms", [b])
                row(
                    f"{name} p{p}: quiet / 4 catastrophic regexes",
                    f"{a:.1f} ms / {b:.1f} ms",
                    f"ratio {b / a:.2f}",
                )
        row("regexes still running in Postgres after the timed GETs", str(still))
    return figures


def _running_regexes(url: str) -> int:
    return int(
        scalar(
            url,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND state = 'active' AND query LIKE %s AND pid <> pg_backend_pid()",
            ["%message ~*%"],
        )
    )


def _free_port() -> int:
    from tasklog.demo.embedded import free_port

    return free_port()


# -- fairness ----------------------------------------------------------------------------------


def _backlog(spool_dir: Path, task_id: str, lines: int, ns: int | None = None) -> None:
    config = ShimConfig(
        enabled=True,
        spool_dir=str(spool_dir),
        max_lines=2 * lines,
        max_line_bytes=16384,
        record_args=False,
    )
    start = {"task_id": task_id, "name": "backlog", "max_lines": config.max_lines}
    cap = TaskCapture(config, task_id, start)
    text = f"{task_id} " + "x" * 60
    for i in range(1, lines + 1):
        cap.write(spool.STDOUT, f"{text} {i}\n")
    cap.finish("SUCCESS")
    if ns is not None:
        (path,) = spool_dir.glob(f"{task_id}.*")
        stem, pid, _, suffix = path.name.split(".", 3)
        path.rename(spool_dir / f"{stem}.{pid}.{ns}.{suffix}")


def fairness(args: argparse.Namespace, databases: Databases, work: Path) -> dict[str, Figure]:
    title("fairness: a new task's line, from its write to Postgres, beside big backlogs")
    results: dict[str, list[float]] = {}
    for phase in ("idle spool", "3 backlogs draining"):
        url = databases.fresh()
        spool_dir = work / f"spool-{phase.split()[0]}"
        spool_dir.mkdir()
        ids = [f"backlog-{i}" for i in range(3)]
        with children() as started:
            collector = Child(
                f"collector-{phase.split()[0]}",
                [python(), "-m", "tasklog", "collector"],
                {"TASKLOG_DATABASE_URL": url, "TASKLOG_SPOOL_DIR": str(spool_dir)},
                work,
            )
            started.append(collector)
            collector.wait_for_log("following")
            # A first task outside the timing: the collector's start-up is not the question.
            _task_file(spool_dir, "warm-up", ["warm-up line"])
            wait_for(lambda u=url: _stored(u, "warm-up"), 120, "the warm-up task", collector)
            if phase != "idle spool":
                for i, task_id in enumerate(ids):
                    _backlog(spool_dir, task_id, args.backlog_lines, ns=0 if i == 0 else None)
            waits = []
            for n in range(args.newcomers):
                task_id = f"newcomer-{n}"
                written = time.monotonic()
                _task_file(spool_dir, task_id, [f"{task_id} line"])
                seen = wait_for(lambda t=task_id, u=url: _stored(u, t), 120, task_id, collector)
                waits.append((seen - written) * 1000)
            left = scalar(url, "SELECT count(*) FROM lines WHERE task_id LIKE 'backlog-%%'")
            if phase != "idle spool":
                row(
                    "backlog lines stored when the last new task was",
                    f"{left:,} of {3 * args.backlog_lines:,}",
                )
        results[phase] = waits
    figures = {}
    base = statistics.median(results["idle spool"])
    for phase, waits in results.items():
        figure = Figure(f"new task stored, {phase}", "ms", waits)
        figures[figure.name] = figure
        row(figure.name, figure.text(1), f"ratio {figure.median / base:.2f}")
    return figures
