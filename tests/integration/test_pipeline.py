"""The capture pipeline end to end: a real Celery worker (prefork and threads) with the shim,
a real Redis broker, the real collector daemon and Postgres, read back through `tasklog`."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from capture_shim import spool
from tests.helpers import REPO_ROOT, ProcessFactory, pg_rows, wait_for

CONCURRENT = 20


@dataclass
class Pipeline:
    procs: ProcessFactory
    database_url: str
    spool_dir: Path
    client: Any

    def send(self, name: str, *args: Any, **kwargs: Any) -> str:
        result = self.client.send_task(name, args=args, kwargs=kwargs)
        return str(result.id)

    def wait_finished(self, ids: list[str], timeout: float = 90) -> None:
        """Every task finished in Postgres and every spool file stored and deleted."""

        def done() -> bool:
            rows = pg_rows(
                self.database_url,
                "SELECT count(*) FROM tasks WHERE task_id = ANY(%s) AND tasklog_finished(state)",
                (ids,),
            )
            return rows[0][0] == len(ids) and not list(self.spool_dir.glob("*" + spool.SUFFIX))

        wait_for(done, timeout=timeout, interval=0.1, message=f"{len(ids)} tasks stored")

    def task(self, task_id: str) -> dict[str, Any]:
        (row,) = pg_rows(
            self.database_url, "SELECT * FROM tasks WHERE task_id = %s", (task_id,), dicts=True
        )
        return row  # type: ignore[no-any-return]

    def lines(self, task_id: str) -> list[tuple[int, str, str | None, str]]:
        return pg_rows(
            self.database_url,
            "SELECT seq, stream, level, message FROM lines WHERE task_id = %s ORDER BY seq, ts",
            (task_id,),
        )

    def cli(self, *args: str) -> list[dict[str, Any]]:
        """`tasklog ARGS --json`, parsed: one object per output line."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKLOG_")}
        env["TASKLOG_DATABASE_URL"] = self.database_url
        out = subprocess.run(
            [sys.executable, "-m", "tasklog", *args, "--json"],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        return [json.loads(line) for line in out.splitlines()]


def _stdout(messages: list[str]) -> list[tuple[int, str, None, str]]:
    return [(i, "stdout", None, m) for i, m in enumerate(messages, 1)]


def _check_once_in_order(pipe: Pipeline, task_id: str) -> list[tuple[int, str, str | None, str]]:
    lines = pipe.lines(task_id)
    assert [seq for seq, *_ in lines] == list(range(1, len(lines) + 1)), lines
    assert pipe.task(task_id)["line_count"] == len(lines)
    return lines


@pytest.fixture
def start_pipeline(
    procs: ProcessFactory, database_url: str, redis_url: str, spool_dir: Path, celery_client: Any
) -> Any:
    def start(pool: str, concurrency: int, **worker_env: str) -> Pipeline:
        procs.collector(
            database_url=database_url, spool_dir=spool_dir, redis_url=redis_url, ready="following"
        )
        procs.worker(
            redis_url=redis_url,
            spool_dir=spool_dir,
            pool=pool,
            concurrency=concurrency,
            env=worker_env,
        )
        return Pipeline(procs, database_url, spool_dir, celery_client)

    return start


@pytest.mark.parametrize(("pool", "concurrency"), [("prefork", 2), ("threads", 8)])
def test_demo_tasks_are_stored_once_in_order(
    start_pipeline: Any, pool: str, concurrency: int
) -> None:
    pipe: Pipeline = start_pipeline(pool, concurrency, TASKLOG_MAX_LINES="100")
    ids = {
        "quick": pipe.send("demo.demo_quick_task"),
        "failing": pipe.send("demo.demo_failing_task"),
        "long": pipe.send("demo.demo_long_task", duration=2, steps=8),
        "timed": pipe.send("celery_tasklog.tasks.timed_print_task", duration=1),
        "progress": pipe.send("demo.progress_task", steps=5, delay=0.05),
        "log": pipe.send("demo.log_task"),
        "retry": pipe.send("demo.retry_task"),
        "mixed": pipe.send("demo.print_lines", 30, stderr_every=3, text="mixed"),
        "unicode": pipe.send("demo.print_text", "é ü ß 🎉🚀 日本語 中文\nsecond é\n"),
        "nul": pipe.send("demo.print_text", "nul \x00 byte\nlone \udcff surrogate\n"),
        "stderr": pipe.send("demo.print_text", "to stderr, no newline", stream="stderr"),
        "bound": pipe.send("demo.print_lines", 1000, text="bound"),
    }
    concurrent = [
        pipe.send("demo.print_lines", 50, text=f"conc{k}", delay=0.002) for k in range(CONCURRENT)
    ]

    # Progress is stored while the task runs, not only at its end.
    def running_progress() -> Any:
        task = (
            pipe.task(ids["long"])
            if pg_rows(pipe.database_url, "SELECT 1 FROM tasks WHERE task_id = %s", (ids["long"],))
            else None
        )
        return task and task["state"] == "PROGRESS" and 0 < (task["progress"] or 0) < 100

    wait_for(running_progress, timeout=60, interval=0.05, message="progress of demo_long_task")

    pipe.wait_finished([*ids.values(), *concurrent])

    assert _check_once_in_order(pipe, ids["quick"]) == _stdout(["Quick task done"])
    quick = pipe.task(ids["quick"])
    assert quick["state"] == "SUCCESS" and quick["task_name"] == "demo.demo_quick_task"
    assert quick["progress"] == 100 and quick["runtime"] is not None and quick["completed_at"]

    assert _check_once_in_order(pipe, ids["failing"]) == _stdout(["About to fail"])
    failing = pipe.task(ids["failing"])
    assert failing["state"] == "FAILURE"
    assert failing["exc_type"] == "Exception" and failing["exc_message"] == "Demo failure"
    assert "Traceback (most recent call last)" in failing["traceback"]
    assert 'raise Exception("Demo failure")' in failing["traceback"]

    assert _check_once_in_order(pipe, ids["long"]) == _stdout(
        ["Processing for 2 seconds", *(f"step {i}/8" for i in range(1, 9)), "done"]
    )
    assert pipe.task(ids["long"])["state"] == "SUCCESS"

    timed = _check_once_in_order(pipe, ids["timed"])
    assert timed[0] == (1, "stdout", None, f"Task {ids['timed']} started manually")
    assert (2, "log", "INFO", f"Starting timed_print_task with ID: {ids['timed']}") in timed
    assert timed[-1][3].startswith(f"Task {ids['timed']} completed successfully after")
    assert any(s == "log" and m.startswith("Iteration 1:") for _, s, _, m in timed)

    assert _check_once_in_order(pipe, ids["progress"]) == _stdout(
        [f"step {i}" for i in range(1, 6)]
    )
    progress = pipe.task(ids["progress"])
    assert progress["progress"] == 100 and progress["progress_message"] == "step 5"

    assert _check_once_in_order(pipe, ids["log"]) == [
        (1, "log", "WARNING", "a warning from logging"),
        (2, "stdout", None, "a print"),
    ]

    # Both attempts of a retried task, seq continuing across them.
    assert _check_once_in_order(pipe, ids["retry"]) == _stdout(["attempt 0", "attempt 1"])
    retry = pipe.task(ids["retry"])
    assert retry["state"] == "SUCCESS" and retry["retries"] == 1

    assert _check_once_in_order(pipe, ids["mixed"]) == [
        (i, "stderr" if i % 3 == 0 else "stdout", None, f"mixed {i}") for i in range(1, 31)
    ]

    assert _check_once_in_order(pipe, ids["unicode"]) == _stdout(
        ["é ü ß 🎉🚀 日本語 中文", "second é"]
    )
    # NUL and a lone surrogate are shown as escapes; the rest of the line is intact.
    assert _check_once_in_order(pipe, ids["nul"]) == _stdout(
        ["nul \\x00 byte", "lone \\udcff surrogate"]
    )
    assert _check_once_in_order(pipe, ids["stderr"]) == [
        (1, "stderr", None, "to stderr, no newline")
    ]

    # TASKLOG_MAX_LINES=100: the first 50 and the last 50 lines, one marker in between.
    bound = pipe.lines(ids["bound"])
    assert bound[:50] == _stdout([f"bound {i}" for i in range(1, 51)])
    assert bound[51:] == [(i, "stdout", None, f"bound {i}") for i in range(951, 1001)]
    seq, stream, level, message = bound[50]
    assert (seq, stream, level) == (51, "marker", None) and "900 lines omitted" in message
    bounded = pipe.task(ids["bound"])
    assert bounded["line_count"] == 101 and bounded["lines_omitted"] == 900

    # Concurrent tasks never see each other's lines.
    for k, task_id in enumerate(concurrent):
        assert _check_once_in_order(pipe, task_id) == _stdout(
            [f"conc{k} {i}" for i in range(1, 51)]
        )

    # No line stored twice, anywhere.
    assert (
        pg_rows(
            pipe.database_url, "SELECT task_id, seq FROM lines GROUP BY 1, 2 HAVING count(*) > 1"
        )
        == []
    )

    # The read path users and tooling rely on.
    listed = {row["task_id"]: row for row in pipe.cli("tasks", "--limit", "100")}
    assert set(listed) >= {*ids.values(), *concurrent}
    assert listed[ids["failing"]]["status"] == "FAILURE"
    assert listed[ids["quick"]]["task_name"] == "demo.demo_quick_task"
    assert listed[ids["progress"]]["progress"] == 100
    assert {listed[i]["status"] for i in concurrent} == {"SUCCESS"}
    for key in ("failing", "unicode", "nul", "mixed", "retry"):
        stored = pipe.lines(ids[key])
        shown = pipe.cli("logs", ids[key])
        if key == "failing":  # a failed task's log ends with its exception
            *shown, exc = shown
            assert exc["type"] == "exception" and exc["exc_message"] == "Demo failure"
        assert [(r["seq"], r["stream"], r["level"], r["message"]) for r in shown] == stored
        assert all(isinstance(r["ts"], str) and r["ts"] for r in shown)

    _measure_latency(pipe, pool)


def _measure_latency(pipe: Pipeline, pool: str) -> None:
    """Print → row visible in Postgres, for lines printed one at a time by an idle pipeline."""
    count = 10
    task_id = pipe.send("demo.print_lines", count, text="latency", delay=0.25)
    seen: dict[int, float] = {}
    stamps: dict[int, float] = {}

    def poll() -> bool:
        now = time.time()
        for seq, ts in pg_rows(
            pipe.database_url,
            "SELECT seq, extract(epoch FROM ts)::float8 FROM lines WHERE task_id = %s",
            (task_id,),
        ):
            if seq not in seen:
                seen[seq], stamps[seq] = now, ts
        return len(seen) == count

    wait_for(poll, timeout=60, interval=0.005, message="latency lines")
    delays = sorted(seen[s] - stamps[s] for s in seen)
    print(
        f"\n[{pool}] print -> row in Postgres over {count} lines: "
        f"median {statistics.median(delays) * 1000:.0f} ms, max {delays[-1] * 1000:.0f} ms "
        f"(poll every 5 ms)"
    )


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_unwritable_spool_dir_task_still_returns_its_result(
    procs: ProcessFactory, redis_url: str, tmp_path: Path, celery_client: Any, pool: str
) -> None:
    # Tests run as root, where permissions stop nothing: a regular file as parent does.
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    worker = procs.worker(redis_url=redis_url, spool_dir=afile / "spool", pool=pool)
    lines = celery_client.send_task("demo.print_lines", args=(3,), kwargs={"text": "fallback"})
    quick = celery_client.send_task("demo.demo_quick_task")
    failing = celery_client.send_task("demo.demo_failing_task")
    assert lines.get(timeout=30) == 3
    assert quick.get(timeout=30) == "quick"
    with pytest.raises(Exception, match="Demo failure"):
        failing.get(timeout=30)
    # The output went to the worker's own streams, with one warning saying why.
    wait_for(lambda: "fallback 3" in worker.log_text(), timeout=10, message="fallback output")
    assert "cannot open spool file" in worker.log_text()
    assert afile.read_text() == "not a directory"
