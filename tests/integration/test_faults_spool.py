"""Spool faults: the spool file system fills up; a spool file is truncated, deleted or replaced
under the collector; a corrupt record sits in the middle of a file. Tasks keep their results,
the collector keeps going (same pid) and says what it skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from capture_shim import spool
from capture_shim.capture import TaskCapture
from capture_shim.config import ShimConfig
from tests.helpers import REPO_ROOT, ProcessFactory, pg_rows, wait_for
from tests.integration.test_collector_faults import write_backlog

FAST_HEARTBEAT = {"TASKLOG_HEARTBEAT_INTERVAL": "0.2", "TASKLOG_RESCAN_INTERVAL": "0.2"}


def _stats(url: str) -> dict[str, Any]:
    rows = pg_rows(url, "SELECT stats FROM collectors")
    return rows[0][0] if rows else {}


def _task(url: str, task_id: str) -> dict[str, Any] | None:
    rows = pg_rows(url, "SELECT * FROM tasks WHERE task_id = %s", (task_id,), dicts=True)
    return rows[0] if rows else None


def _lines(url: str, task_id: str) -> list[tuple[int, str]]:
    return pg_rows(
        url, "SELECT seq, message FROM lines WHERE task_id = %s ORDER BY seq", (task_id,)
    )


def _no_spool_files(directory: Path) -> bool:
    return not list(directory.glob("*" + spool.SUFFIX))


# -- 5. the spool file system fills up ---------------------------------------------------------


@pytest.fixture
def small_spool(tmp_path: Path, procs: ProcessFactory) -> Iterator[Path]:
    """A 256 KiB tmpfs as the spool dir; unmounted after the test's processes stopped."""
    path = tmp_path / "small-spool"
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        procs.stop_all()
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_full_spool_file_system(
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    small_spool: Path,
    celery_client: Any,
) -> None:
    collector = procs.collector(
        database_url=database_url,
        spool_dir=small_spool,
        redis_url=redis_url,
        ready="following",
        env=FAST_HEARTBEAT,
    )
    # One process for every task (prefork, one child): it holds what the full disk refused.
    worker = procs.worker(
        redis_url=redis_url,
        spool_dir=small_spool,
        pool="prefork",
        concurrency=1,
        env={"TASKLOG_MAX_LINES": "100000"},
    )
    wait_for(lambda: _stats(database_url).get("spool_full") is False, message="room at first")
    ballast = small_spool / "ballast"  # not a spool file: the collector leaves it alone
    ballast.write_bytes(b"\0" * (150 << 10))

    count = 2000  # ~330 KB of records: more than the whole file system
    big = celery_client.send_task("demo.print_lines", args=(count,), kwargs={"text": "x" * 120})
    assert big.get(timeout=60) == count  # the task is not hurt
    wait_for(
        lambda: _stats(database_url).get("spool_full") is True,
        timeout=20,
        message="heartbeat stats saying the spool is full",
    )
    stats = _stats(database_url)
    assert stats["spool_free_bytes"] < 64 << 10
    assert "spool file system of" in collector.log_text() and "is full" in collector.log_text()
    # What did not fit went to the worker's own output, with one warning saying why.
    assert "cannot write spool file" in worker.log_text()
    assert f"{'x' * 120} {count}" in worker.log_text()
    stored_while_full = len(_lines(database_url, big.id))
    assert 0 < stored_while_full < count

    ballast.unlink()  # space frees
    wait_for(
        lambda: _stats(database_url).get("spool_full") is False,
        timeout=20,
        message="heartbeat stats saying there is room again",
    )
    quick = celery_client.send_task("demo.demo_quick_task")
    assert quick.get(timeout=30) == "quick"
    after = celery_client.send_task("demo.print_lines", args=(50,), kwargs={"text": "after"})
    assert after.get(timeout=30) == 50
    wait_for(lambda: _no_spool_files(small_spool), timeout=30, message="every file stored")

    # The big task's end record, refused by the full disk, was written by the same process
    # before its next task: the task is finished, its errors counted.
    task = _task(database_url, big.id)
    assert task is not None and task["state"] == "SUCCESS"
    stored = _lines(database_url, big.id)
    assert len(stored) == task["line_count"] == stored_while_full
    assert task["spool_errors"] == count - len(stored)
    # Whole records only: every stored line is one the task printed, at its own seq.
    assert all(message == f"{'x' * 120} {seq}" for seq, message in stored)
    assert _lines(database_url, quick.id) == [(1, "Quick task done")]
    assert _lines(database_url, after.id) == [(i, f"after {i}") for i in range(1, 51)]
    assert _task(database_url, after.id)["spool_errors"] == 0  # type: ignore[index]
    assert collector.alive
    print(
        f"\nspool full: {count} lines printed, {len(stored)} stored, "
        f"{task['spool_errors']} counted as spool errors (worker's own output), 0 duplicated; "
        f"free bytes while full: {stats['spool_free_bytes']}"
    )


def test_a_record_torn_by_a_full_disk_is_taken_back(tmp_path: Path) -> None:
    """A file-size limit (RLIMIT_FSIZE) stands for a full disk, without mounting anything."""
    script = textwrap.dedent(f"""
        import resource, signal
        from capture_shim import spool
        from capture_shim.capture import TaskCapture
        from capture_shim.config import ShimConfig

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death
        config = ShimConfig(True, {str(tmp_path)!r}, 1000, 16384, False)
        cap = TaskCapture(config, "torn", {{"task_id": "torn", "name": "t"}})
        path = cap._spool.path
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        for i in range(1, 4):
            cap.write(spool.STDOUT, f"{{i}} " + "y" * 200 + "\\n")
        import os
        resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(path) + 100, hard))
        cap.write(spool.STDOUT, "4 " + "y" * 200 + "\\n")  # torn at the limit
        cap.write(spool.STDOUT, "5 short\\n")  # fits where the torn record was
        cap.write(spool.STDOUT, "6 " + "y" * 200 + "\\n")  # refused
        cap.finish("SUCCESS")  # its end record refused too: held by the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        TaskCapture(config, "next", {{"task_id": "next", "name": "t"}}).finish("SUCCESS")
        print(path)
    """)
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    path = Path(out.strip().splitlines()[-1])
    records = [json.loads(line) for line in path.read_bytes().splitlines()]  # all whole
    lines = [(r["n"], r["m"].split()[0]) for r in records if r["k"] == spool.LINE]
    assert lines == [(1, "1"), (2, "2"), (3, "3"), (5, "5")]
    assert records[-1]["k"] == spool.END and records[-1]["errors"] == 2
    assert records[-1]["lines"] == 6


# -- 6. files truncated, deleted, replaced; a corrupt record -----------------------------------


def test_files_truncated_deleted_replaced_or_corrupt_under_the_collector(
    procs: ProcessFactory, database_url: str, spool_dir: Path, tmp_path: Path
) -> None:
    config = ShimConfig(
        enabled=True,
        spool_dir=str(spool_dir),
        max_lines=1000,
        max_line_bytes=16384,
        record_args=False,
    )

    def start(task_id: str, lines: int) -> TaskCapture:
        cap = TaskCapture(config, task_id, {"task_id": task_id, "name": "faulty"})
        for i in range(1, lines + 1):
            cap.write(spool.STDOUT, f"{task_id} {i}\n")
        return cap

    url = database_url
    proc = procs.collector(
        database_url=url, spool_dir=spool_dir, ready="following", env=FAST_HEARTBEAT
    )
    caps = {name: start(name, 10) for name in ("truncated", "deleted", "replaced", "corrupt")}
    wait_for(
        lambda: all(len(_lines(url, name)) == 10 for name in caps),
        timeout=30,
        message="the first 10 lines of each task stored",
    )
    path = {name: Path(cap._spool.path) for name, cap in caps.items()}  # type: ignore[union-attr]

    # Truncated to nothing under the collector: it skips to the new end, keeps what follows.
    os.truncate(path["truncated"], 0)
    wait_for(lambda: "shrank below what was stored" in proc.log_text(), message="shrink noticed")
    for i in range(11, 14):
        caps["truncated"].write(spool.STDOUT, f"truncated {i}\n")
    caps["truncated"].finish("SUCCESS")

    # Deleted while its task still runs: reported; what the task writes after it is gone.
    path["deleted"].unlink()
    caps["deleted"].write(spool.STDOUT, "deleted 11\n")
    caps["deleted"].finish("SUCCESS")

    # Replaced by another file of the same name (another inode): read as a new run of the task.
    os.link(path["replaced"], tmp_path / "old-replaced")  # keeps the old inode from reuse
    path["replaced"].unlink()
    path["replaced"].write_bytes(
        spool.encode(
            {
                "k": spool.START,
                "v": spool.VERSION,
                "t": 1.7e9,
                "task_id": "replaced",
                "name": "faulty",
            }
        )
        + b"".join(spool.encode_line(i, spool.STDOUT, f"replacement {i}") for i in (1, 2))
        + spool.encode({"k": spool.END, "t": 1.7e9, "state": "SUCCESS", "lines": 2, "errors": 0})
    )
    caps["replaced"].finish("SUCCESS")  # into the old, unlinked inode: not seen

    # A corrupt record in the middle of a file, between two whole ones.
    with open(path["corrupt"], "ab") as f:
        f.write(b'{"k":"line","n":11,"t":1.0,"s":"stdout","m":"torn\n\x00\xff garbage\n')
    for i in range(11, 15):
        caps["corrupt"].write(spool.STDOUT, f"corrupt {i}\n")
    caps["corrupt"].finish("SUCCESS")

    later = write_backlog(spool_dir, 5, 20, prefix="later")  # the collector still stores
    wait_for(
        lambda: all(
            _task(url, i) and _task(url, i)["state"] == "SUCCESS"  # type: ignore[index]
            for i in [*later, "truncated", "corrupt", "replaced"]
        ),
        timeout=30,
        message="later tasks and the damaged ones finished",
    )
    wait_for(lambda: _no_spool_files(spool_dir), timeout=30, message="every file done")
    wait_for(
        lambda: (
            _stats(url).get("vanished", 0) >= 1
            and _stats(url).get("corrupt", 0) >= 2
            and _stats(url).get("truncated", 0) >= 1
        ),
        timeout=20,
        message="the skipped records in the heartbeat stats",
    )

    assert proc.alive and proc.returncode is None
    assert _lines(url, "truncated") == [(i, f"truncated {i}") for i in range(1, 14)]
    deleted = _task(url, "deleted")
    # Its end went with the file: the task is LOST, with the lines stored before.
    assert deleted is not None and deleted["state"] == "LOST"
    assert "spool file was deleted" in deleted["exc_message"]
    assert _lines(url, "deleted") == [(i, f"deleted {i}") for i in range(1, 11)]
    assert _lines(url, "replaced") == [
        *((i, f"replaced {i}") for i in range(1, 11)),
        (11, "replacement 1"),
        (12, "replacement 2"),
    ]
    assert _lines(url, "corrupt") == [(i, f"corrupt {i}") for i in range(1, 15)]
    for task_id in later:
        assert _lines(url, task_id) == [(i, f"{task_id} line {i}") for i in range(1, 21)]
    log = proc.log_text()
    assert "disappeared before its end was stored (task deleted)" in log
    assert "was replaced; reading the new one from its start" in log
    assert "skipped a corrupt record" in log
    stats = _stats(url)
    print(
        f"\nspool faults: stats corrupt={stats['corrupt']} vanished={stats['vanished']} "
        f"truncated={stats['truncated']}; collector pid {proc.pid} throughout"
    )
