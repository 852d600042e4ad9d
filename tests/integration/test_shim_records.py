"""What the shim writes, read back by the collector's own reader: hostile level names and
client-chosen ids make exactly the records meant, in a real worker."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from capture_shim import spool
from collector import fields
from collector.batch import FileChunk
from collector.tail import SpoolDir
from tests.helpers import ProcessFactory, wait_for

#: Custom logging level names that rewrote or split a record while the shim wrote them raw.
HOSTILE_LEVELS = [
    'INFO", "kind": "end',
    'INFO","k":"end","state":"SUCCESS',
    'X"}\n{"k":"end","state":"SUCCESS","t":1}\n{"k":"line","n":9,"t":1,"s":"stdout","m":"',
    "new\nline",
    "nul\x00",
    "back\\slash\\",
    "lone \udcff",
    "ÉTAPE ✓",
]


def _finished(spool_dir: Path, task_id: str) -> tuple[list[dict[str, Any]], FileChunk]:
    """The task's records as JSON reads them, and as the collector's reader takes them."""

    def ended() -> Path | None:
        for path in spool_dir.glob("*" + spool.SUFFIX):
            raw = path.read_bytes()
            if task_id in raw.decode("utf-8") and b'"k":"end"' in raw.splitlines()[-1]:
                return path
        return None

    path = wait_for(ended, timeout=30, message="the task's spool file with its end record")
    records = [json.loads(line) for line in path.read_bytes().splitlines()]
    reader = SpoolDir(spool_dir, {})
    reader.scan()
    (chunk,) = [c for c in reader.read_batch(10_000, 1 << 24).chunks if c.state.name == path.name]
    return records, chunk


def test_level_names_and_foreign_ids_make_exactly_the_records_meant(
    procs: ProcessFactory, redis_url: str, spool_dir: Path, celery_client: Any
) -> None:
    procs.worker(redis_url=redis_url, spool_dir=spool_dir, pool="solo", concurrency=1)

    levels = celery_client.send_task("demo.log_levels", args=(HOSTILE_LEVELS,))
    assert levels.get(timeout=30) == len(HOSTILE_LEVELS)
    records, chunk = _finished(spool_dir, levels.id)
    assert [r["k"] for r in records] == ["start"] + ["line"] * len(HOSTILE_LEVELS) + ["end"]
    assert [(r["n"], r["s"], r["l"], r["m"]) for r in records[1:-1]] == [
        (n, spool.LOG, name, f"at level {50 + n}") for n, name in enumerate(HOSTILE_LEVELS, 1)
    ]
    assert chunk.corrupt == 0
    assert chunk.start is not None and chunk.start["task_id"] == levels.id
    # The collector takes them as storable text of at most LEVEL_BYTES (NUL and a lone
    # surrogate made visible escapes, a long name cut), one line each, nothing else.
    assert [(line.seq, line.stream, line.level, line.message) for line in chunk.lines] == [
        (n, spool.LOG, fields.short_text(name, fields.LEVEL_BYTES), f"at level {50 + n}")
        for n, name in enumerate(HOSTILE_LEVELS, 1)
    ]
    assert chunk.end is not None and chunk.end["state"] == "SUCCESS"
    assert chunk.end["lines"] == len(HOSTILE_LEVELS)

    # Parent and root ids come from the message, which any client writes: the start record
    # carries them only when they are task ids the format can carry.
    too_long = "p" * (spool.MAX_TASK_ID_BYTES + 1)
    at_limit = "é" * (spool.MAX_TASK_ID_BYTES // 2)  # two bytes each
    for parent_id, root_id, expected in (
        ("parent-1", "root-1", ("parent-1", "root-1")),
        (too_long, "nul\x00root", (None, None)),
        (at_limit, at_limit + "é", (at_limit, None)),
    ):
        sent = celery_client.send_task(
            "demo.print_text", args=("hello\n",), parent_id=parent_id, root_id=root_id
        )
        assert sent.get(timeout=30) == "ok"
        records, chunk = _finished(spool_dir, sent.id)
        assert chunk.corrupt == 0 and chunk.start is not None
        assert (chunk.start["parent_id"], chunk.start["root_id"]) == expected
        assert [line.message for line in chunk.lines] == ["hello"]


def test_a_task_base_class_alone_learns_the_pool_and_captures_fd_output(
    procs: ProcessFactory, redis_url: str, spool_dir: Path, celery_client: Any
) -> None:
    """No `install(app)`: the task class connects the worker hooks when the worker finalizes
    the app, before `worker_init` and the prefork children's `worker_process_init`."""
    procs.start(
        "terminal-worker",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.terminal_task_app",
            "worker",
            "-P",
            "prefork",
            "-c",
            "1",
            "-l",
            "info",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            f"terminal-{os.getpid()}@%h",
        ],
        env={"TASKLOG_REDIS_URL": redis_url, "TASKLOG_SPOOL_DIR": str(spool_dir)},
        ready=re.compile(r"\bready\.$", re.M),
    )
    sent = celery_client.send_task("terminal.mixed")
    assert sent.get(timeout=30) == "ok"
    _, chunk = _finished(spool_dir, sent.id)
    assert chunk.corrupt == 0 and chunk.end is not None
    assert [(line.seq, line.message) for line in chunk.lines] == [
        (1, "py before"),
        (2, "fd line"),  # a child's: captured only where the pool is known to be safe
        (3, "py after"),
    ]
