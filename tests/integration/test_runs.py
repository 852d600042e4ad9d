"""Each run of a retried task begins where its own lines begin, however the spool is batched."""

from __future__ import annotations

from pathlib import Path

from capture_shim import spool
from capture_shim.capture import TaskCapture
from capture_shim.config import ShimConfig
from tasklog.core.constants import RETRY, STARTED, SUCCESS
from tests.helpers import ProcessFactory, pg_rows, wait_for


def run(spool_dir: Path, retries: int) -> TaskCapture:
    config = ShimConfig(
        enabled=True,
        spool_dir=str(spool_dir),
        max_lines=100,
        max_line_bytes=16384,
        record_args=False,
    )
    start = {"task_id": "again", "name": "demo.retry", "retries": retries, "max_lines": 100}
    return TaskCapture(config, "again", start)


def test_two_runs_stored_in_one_batch_keep_their_own_first_seq(
    procs: ProcessFactory, database_url: str, spool_dir: Path
) -> None:
    """An immediate retry: both runs' files are in the spool before the collector reads either,
    so one transaction upserts both starts before any line advances the task's last seq."""
    for retries, lines, state in ((0, 3, RETRY), (1, 2, SUCCESS)):
        cap = run(spool_dir, retries)
        for i in range(lines):
            cap.write(spool.STDOUT, f"run {retries} line {i}\n")
        cap.finish(state)

    procs.collector(database_url=database_url, spool_dir=spool_dir, ready="following")
    wait_for(lambda: not list(spool_dir.glob("*" + spool.SUFFIX)), message="both runs stored")
    runs = pg_rows(database_url, "SELECT run, first_seq, state FROM task_runs ORDER BY run")
    assert runs == [(0, 1, RETRY), (1, 4, SUCCESS)]
    stored = pg_rows(database_url, "SELECT seq, message FROM lines ORDER BY seq")
    assert [m for _, m in stored][3] == "run 1 line 0"
    assert pg_rows(database_url, "SELECT state FROM tasks") == [(SUCCESS,)]


def test_an_older_runs_end_stored_after_the_retry_began_is_its_own(
    procs: ProcessFactory, database_url: str, spool_dir: Path
) -> None:
    """Run 0 stored; then its RETRY end and run 1's start reach the collector together. The
    task is running run 1 (not RETRY), and run 0's section says RETRY."""
    procs.collector(database_url=database_url, spool_dir=spool_dir, ready="following")
    first = run(spool_dir, 0)
    first.write(spool.STDOUT, "run 0 line 0\n")
    wait_for(lambda: pg_rows(database_url, "SELECT count(*) FROM lines") == [(1,)], message="run 0")
    second = run(spool_dir, 1)
    second.write(spool.STDOUT, "run 1 line 0\n")
    first.finish(RETRY)

    def runs() -> list[tuple[int, int, str]]:
        return pg_rows(database_url, "SELECT run, first_seq, state FROM task_runs ORDER BY run")

    wait_for(lambda: runs() == [(0, 1, RETRY), (1, 2, STARTED)], message="both runs recorded")
    assert pg_rows(database_url, "SELECT state FROM tasks") == [(STARTED,)]
    second.finish(SUCCESS)
    wait_for(lambda: runs() == [(0, 1, RETRY), (1, 2, SUCCESS)], message="run 1 ended")
    assert pg_rows(database_url, "SELECT state FROM tasks") == [(SUCCESS,)]
