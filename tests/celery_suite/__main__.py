"""Celery's own integration suite, with and without the shim: nothing that passes without it may
fail with it (issue 24).

    python -m tests.celery_suite [--select SPEC ...] [--timeout SECONDS]

Takes ``t/integration`` from the sdist of the *installed* Celery version (``pip download
--no-deps --no-binary :all: celery==<version>``, kept under ``~/.cache/tasklog/celery-suite``),
starts a Redis and a Postgres of its own (`tasklog.demo.embedded`), and runs the selection twice
with Celery's session worker (prefork, in the pytest process, as the suite has it):

1. plain;
2. with ``capture_shim.install(celery_session_app)`` (`tests.celery_suite.plugin`) and a
   collector storing the spool into the Postgres.

Each run starts no test after ``--timeout`` seconds (180); the tests both runs reached are
compared. It fails (exit 1) when a test that passed in run 1 does not pass in run 2 (run once
more with the shim first: Celery's suite has timing-sensitive tests), when fewer than half of
run 1's passed tests could be compared, or when the collector did not store every run's end (a
spool file left, or a task left STARTED); it prints both runs' counts, the tasks stored by
state, and the time taken. Exit 2: the suite could not be set up.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import psycopg

from collector.migrate import migrate
from tasklog.demo.embedded_postgres import EmbeddedPostgres
from tasklog.demo.embedded_redis import EmbeddedRedis

REPO_ROOT = Path(__file__).resolve().parents[2]
#: What runs by default: every task test (test_tasks.py, 63 tests), and the canvas tests of
#: groups, error links, result sets and xmap (51): about 3 minutes a run on 2 busy cores. The
#: chain (66) and chord (102) classes double that; ``--select`` runs them.
DEFAULT_SELECTION = (
    "t/integration/test_tasks.py",
    "t/integration/test_canvas.py::test_group",
    "t/integration/test_canvas.py::test_link_error",
    "t/integration/test_canvas.py::test_result_set",
    "t/integration/test_canvas.py::test_xmap_xstarmap",
)
#: At most this many tests that broke with the shim are run once more (more: a real break).
MAX_RERUNS = 10
#: The key of a run's outcomes saying it did not complete.
INCOMPLETE = "(the run itself)"
#: Seconds after which a run starts no more tests (pytest-timeout's --session-timeout); the
#: tests it ran are compared. Two runs, a re-run and the set-up fit in 8 minutes.
DEFAULT_TIMEOUT = 180.0
#: The same for the re-run of the tests that broke with the shim.
RERUN_TIMEOUT = 45.0
#: A run that compares fewer of the plain run's passed tests than this share fails.
MIN_COMPARED = 0.5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.celery_suite", description=__doc__)
    parser.add_argument("--select", nargs="+", default=list(DEFAULT_SELECTION), metavar="SPEC")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/tasklog/celery-suite")
    args = parser.parse_args(argv)
    began = time.monotonic()
    version = importlib.metadata.version("celery")
    try:
        suite = fetch_suite(version, args.cache)
    except (OSError, subprocess.CalledProcessError, tarfile.TarError) as exc:
        print(f"celery suite: cannot get t/integration of celery {version}: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="tasklog-celery-suite-") as tmp:
        work = Path(tmp)
        with EmbeddedRedis(work / "redis") as redis, EmbeddedPostgres(work / "pg", fast=True) as pg:
            with psycopg.connect(pg.url(), autocommit=True) as conn:
                conn.execute("CREATE DATABASE tasklog")
            database = pg.url("tasklog")
            migrate(database)
            plain = run_suite(suite, args.select, redis.url(1), redis.url(2), None, args.timeout)
            print(f"celery {version}, plain: {summary(plain)}")
            flush(redis.url(1), redis.url(2))
            spool = work / "spool"
            spool.mkdir()
            collector = start_collector(database, spool, suite / "collector.log")
            try:
                shimmed = run_suite(
                    suite, args.select, redis.url(1), redis.url(2), spool, args.timeout
                )
                print(f"celery {version}, with the shim: {summary(shimmed)}")
                # A test the shimmed run did not reach (its session timeout) is not compared.
                passed = [name for name, outcome in plain.items() if outcome == "passed"]
                compared = [name for name in passed if name in shimmed]
                broken = sorted(name for name in compared if shimmed[name] != "passed")
                if broken:
                    print("broke with the shim: " + ", ".join(broken))
                if broken and len(broken) <= MAX_RERUNS:
                    # Celery's suite has timing-sensitive tests (its `flaky` marks): what broke
                    # is run once more with the shim, and counts only if it breaks again.
                    again = run_suite(
                        suite, broken, redis.url(1), redis.url(2), spool, RERUN_TIMEOUT
                    )
                    print(f"run again with the shim: {summary(again)}")
                    shimmed.update({k: v for k, v in again.items() if k != INCOMPLETE})
                    broken = [name for name in broken if shimmed.get(name) != "passed"]
                left = drain(spool, deadline=30)
            finally:
                stopped = stop(collector)
            states = stored_states(database)
    print(
        f"tasks stored: {sum(states.values())} "
        + ", ".join(f"{s} {n}" for s, n in sorted(states.items()))
    )
    problems = [
        f"{which} run incomplete: {outcome[INCOMPLETE]}"
        for which, outcome in (("plain", plain), ("shimmed", shimmed))
        if INCOMPLETE in outcome
    ]
    print(f"compared: {len(compared)} of the {len(passed)} tests that passed plain")
    if len(compared) < MIN_COMPARED * len(passed):
        problems.append(f"only {len(compared)} of {len(passed)} tests compared (too slow a run)")
    if broken:
        problems.append(f"{len(broken)} tests pass without the shim and not with it:")
        problems += [f"  {name}: {shimmed.get(name, 'not run')}" for name in broken]
    if not stopped:
        problems.append("the collector did not stop within 30 s of SIGTERM (killed)")
    if left:
        problems.append(f"{left} spool files not stored by the collector within 30 s")
    if states.get("STARTED"):
        problems.append(f"{states['STARTED']} tasks left STARTED")
    if not states:
        problems.append("no task stored: the shim captured nothing")
    print(f"took {time.monotonic() - began:.0f} s")
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0


def fetch_suite(version: str, cache: Path) -> Path:
    """A directory holding celery `version`'s ``t/`` and ``pyproject.toml`` (its pytest
    settings), without the ``celery/`` sources (the installed Celery is the one tested)."""
    target = cache / version
    if (target / "t" / "integration" / "conftest.py").exists():
        return target
    with tempfile.TemporaryDirectory(prefix="celery-sdist-") as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"celery=={version}",
                "-d",
                tmp,
            ],
            check=True,
        )
        (archive,) = Path(tmp).glob("celery-*.tar.gz")
        staging = cache / f".{version}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        top = f"celery-{version}/"
        with tarfile.open(archive) as tar:
            members = [
                m for m in tar.getmembers()
                if m.name.startswith(top + "t/") or m.name == top + "pyproject.toml"
            ]  # fmt: skip
            tar.extractall(staging, members=members, filter="data")
        shutil.rmtree(target, ignore_errors=True)
        (staging / top).rename(target)
        shutil.rmtree(staging, ignore_errors=True)
    return target


def run_suite(
    suite: Path, select: list[str], broker: str, backend: str, spool: Path | None, timeout: float
) -> dict[str, str]:
    """Run the selection once, starting no test after `timeout` seconds; each test's outcome
    (passed, failed, error, skipped)."""
    report = suite / ("shim.xml" if spool else "plain.xml")
    report.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKLOG_", "TEST_"))}
    env.update(
        TEST_BROKER=broker,
        TEST_BACKEND=backend,
        PYTHONPATH=os.pathsep.join([str(suite), str(REPO_ROOT)]),
    )
    argv = [sys.executable, "-m", "pytest", *select, "-q", "-p", "no:cacheprovider",
            "-p", "celery.contrib.pytest", f"--junitxml={report}", "-o", "junit_family=xunit2",
            "--timeout=30", f"--session-timeout={timeout:.0f}"]  # fmt: skip
    if spool is not None:
        env["TASKLOG_SPOOL_DIR"] = str(spool)
        argv += ["-p", "tests.celery_suite.plugin"]
    log = suite / ("shim.log" if spool else "plain.log")
    with log.open("wb") as out:
        try:
            subprocess.run(
                argv,
                cwd=suite,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout + 60,  # the last test's own 30 s, and the session's end
            )
        except subprocess.TimeoutExpired:
            print(f"celery suite: the run did not end; see {log}", file=sys.stderr)
            return {INCOMPLETE: f"did not end {timeout + 60:.0f} s after it began"}
    found = outcomes(report)
    return found or {INCOMPLETE: f"no test report; see {log}"}


def outcomes(report: Path) -> dict[str, str]:
    if not report.exists():
        return {}
    found: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = node_id(case.get("classname") or "", case.get("name") or "")
        kinds = {child.tag for child in case}
        if "failure" in kinds:
            found[name] = "failed"
        elif "error" in kinds:
            found[name] = "error"
        elif "skipped" in kinds:
            found[name] = "skipped"
        else:
            found[name] = "passed"
    return found


def node_id(classname: str, name: str) -> str:
    """The pytest node id of a JUnit test case (``t.integration.test_tasks.test_tasks`` and
    ``test_fail``: ``t/integration/test_tasks.py::test_tasks::test_fail``), to run it again."""
    parts = classname.split(".")
    module = next((i for i, part in enumerate(parts) if part.startswith("test_")), len(parts) - 1)
    path = "/".join(parts[: module + 1]) + ".py"
    return "::".join([path, *parts[module + 1 :], name])


def summary(results: dict[str, str]) -> str:
    counts = Counter(results.values())
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no test ran"


def flush(*urls: str) -> None:
    import redis

    for url in urls:  # the embedded Redis is this run's own
        client = redis.Redis.from_url(url)
        try:
            client.flushdb()
        finally:
            client.close()


def start_collector(database: str, spool: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKLOG_")}
    env.update(
        TASKLOG_DATABASE_URL=database,
        TASKLOG_SPOOL_DIR=str(spool),
        TASKLOG_HOST="celery-suite",
        TASKLOG_LOCK_DIR=str(spool.parent),
        # Runs whose writer died (a pool child killed by a time limit after the session
        # worker's process ended) are finalized within the drain's wait.
        TASKLOG_ORPHAN_TIMEOUT="5",
        PYTHONPATH=str(REPO_ROOT),
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tasklog", "collector"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )
    deadline = time.monotonic() + 30
    while b"following" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"celery suite: the collector did not start:\n{log.read_text()}")
        time.sleep(0.1)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> bool:
    """SIGTERM, and SIGKILL after 30 s; whether it stopped by itself."""
    proc.terminate()
    try:
        proc.wait(30)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        return False


def drain(spool: Path, deadline: float) -> int:
    """Wait until the collector stored every spool file (it deletes each once its end is
    stored); the number left at the deadline. Runs whose writer died are finalized after
    TASKLOG_ORPHAN_TIMEOUT."""
    end = time.monotonic() + deadline
    while True:
        left = len(list(spool.glob("*.jsonl")))
        if not left or time.monotonic() > end:
            return left
        time.sleep(0.2)


def stored_states(database: str) -> dict[str, int]:
    with psycopg.connect(database) as conn:
        rows = conn.execute("SELECT state, count(*) FROM tasks GROUP BY state").fetchall()
    return {state: count for state, count in rows}


if __name__ == "__main__":
    raise SystemExit(main())
