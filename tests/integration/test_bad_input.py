"""Bad input end to end, through a real worker, the collector and Postgres, read back with
`tasklog logs --json`: hostile task ids, huge and strange output, task args on and off."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from capture_shim import spool
from tests.helpers import REPO_ROOT, ProcessFactory, pg_rows, wait_for
from tests.integration.test_faults_worker import peak_rss_kb

MARKER = "(TASKLOG_MAX_LINES keeps the first and last lines)"


def _cli_logs(database_url: str, task_id: str) -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKLOG_")}
    env["TASKLOG_DATABASE_URL"] = database_url
    out = subprocess.run(
        [sys.executable, "-m", "tasklog", "logs", task_id, "--json"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=120,
        check=True,
    ).stdout
    # Split on "\n" only: str.splitlines also splits on U+2028 and friends, valid inside JSON.
    return [json.loads(line) for line in out.decode("utf-8").split("\n") if line]


def _state(url: str, task_id: str) -> str | None:
    rows = pg_rows(url, "SELECT state FROM tasks WHERE task_id = %s", (task_id,))
    return rows[0][0] if rows else None


def _lines(url: str, task_id: str) -> list[tuple[int, str, str]]:
    return pg_rows(
        url, "SELECT seq, stream, message FROM lines WHERE task_id = %s ORDER BY seq", (task_id,)
    )


def _tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


@pytest.mark.slow  # a `tasklog logs` process per id
def test_hostile_task_ids(
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
    tmp_path: Path,
) -> None:
    procs.collector(
        database_url=database_url, spool_dir=spool_dir, redis_url=redis_url, ready="following"
    )
    worker = procs.worker(redis_url=redis_url, spool_dir=spool_dir, pool="prefork", concurrency=2)
    before = {p.name for p in tmp_path.iterdir()}
    stored_ids = {
        "space": " ",
        "dots": "..",
        "hidden": ".hidden",
        "parent": "../../escape",
        "slashes": "a/b/c",
        "absolute": f"/tmp/tasklog-escape-{secrets.token_hex(4)}",
        "unicode": "タスク-🎉-ü-\u202e-id",
        "markup": "<script>alert(1)</script>",
        "near limit": "k" + secrets.token_hex(spool.MAX_TASK_ID_BYTES // 2 - 1),  # 1023 bytes
    }
    refused_ids = {
        "10 KB": secrets.token_hex(5 * 1024),  # incompressible: no Postgres index could hold it
        "10 KB same char": "x" * 10 * 1024,
        "NUL": "nul\x00id",
    }
    results = {
        label: celery_client.send_task(
            "demo.print_text", args=(f"hello {label}\n",), task_id=task_id
        )
        for label, task_id in {**stored_ids, **refused_ids}.items()
    }
    # An empty id: Celery itself replaces it with a fresh uuid.
    empty = celery_client.send_task("demo.print_text", args=("hello empty\n",), task_id="")
    assert empty.id and empty.id != ""
    stored_ids["empty"] = empty.id
    results["empty"] = empty

    for label, result in results.items():  # every task ran normally, captured or not
        assert result.get(timeout=30) == "ok", label
        assert result.id == {**stored_ids, **refused_ids}[label]
    wait_for(
        lambda: all(_state(database_url, i) == "SUCCESS" for i in stored_ids.values()),
        timeout=30,
        message="every storable id stored",
    )
    wait_for(lambda: not list(spool_dir.glob("*" + spool.SUFFIX)), message="spool drained")

    for label, task_id in stored_ids.items():
        assert _lines(database_url, task_id) == [(1, "stdout", f"hello {label}")], label
        shown = _cli_logs(database_url, task_id)
        assert [(r["seq"], r["message"]) for r in shown] == [(1, f"hello {label}")], label
    # Refused with a clear message in the worker's log; their output went there too.
    for task_id in (refused_ids["10 KB"], refused_ids["10 KB same char"]):
        assert _state(database_url, task_id) is None
    log = worker.log_text()
    assert "bytes long (at most 1024); its output is not captured" in log
    assert "contains a NUL character; its output is not captured" in log
    assert "hello NUL" in log and "hello 10 KB" in log
    assert pg_rows(database_url, "SELECT count(*) FROM tasks") == [(len(stored_ids),)]
    # No file anywhere but in the spool dir (and no directory made inside it).
    assert {p.name for p in tmp_path.iterdir()} == before
    assert not Path(stored_ids["absolute"]).exists()
    assert not (tmp_path.parent / "escape").exists()
    assert [p for p in spool_dir.iterdir() if p.is_dir()] == []


def test_strange_and_huge_output(
    procs: ProcessFactory, database_url: str, redis_url: str, spool_dir: Path, celery_client: Any
) -> None:
    collector = procs.collector(
        database_url=database_url, spool_dir=spool_dir, redis_url=redis_url, ready="following"
    )
    procs.worker(
        redis_url=redis_url,
        spool_dir=spool_dir,
        pool="prefork",
        concurrency=2,
        env={"TASKLOG_MAX_LINE_BYTES": "16384", "TASKLOG_MAX_LINES": "1000"},
    )
    verbatim = [
        "<script>alert('x')</script> <img src=x onerror=alert(1)> &amp; &lt;",
        "\x1b[31mred\x1b[0m \x1b[1;4mbold\x1b[0m \x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\",
        "bell\x07 backspace\x08 formfeed\x0c vtab\x0b del\x7f esc\x1b tab\t cr\r mid",
        "\u2028line sep\u2029para sep \ufeffbom \u202eRTL",
    ]
    huge = 10_000_000
    many = 200_000
    sent = {
        "verbatim": celery_client.send_task("demo.print_text", args=("\n".join(verbatim) + "\n",)),
        "nul": celery_client.send_task("demo.print_text", args=("a\x00b\x00\n",)),
        "bytes": celery_client.send_task(
            "demo.print_bytes", args=((b"ok \xff\xfe \xc3\x28 \xe2\x82 end\n").hex(),)
        ),
        "huge": celery_client.send_task("demo.print_text", args=("y" * huge + "\nafter\n",)),
        "many": celery_client.send_task("demo.print_lines", args=(many,), kwargs={"text": "m"}),
    }
    for result in sent.values():
        result.get(timeout=120)
    ids = {label: r.id for label, r in sent.items()}
    wait_for(
        lambda: all(_state(database_url, i) == "SUCCESS" for i in ids.values()),
        timeout=120,
        message="every task stored",
    )

    def messages(label: str) -> list[str]:
        return [m for _, _, m in _lines(database_url, ids[label])]

    assert messages("verbatim") == verbatim
    assert messages("nul") == ["a\\x00b\\x00"]
    assert messages("bytes") == ["ok \\xff\\xfe \\xc3( \\xe2\\x82 end"]
    assert messages("huge") == [f"{'y' * 16384} … [line cut: {huge - 16384} more bytes]", "after"]
    kept = _lines(database_url, ids["many"])
    assert len(kept) == 1001
    assert kept[:500] == [(i, "stdout", f"m {i}") for i in range(1, 501)]
    assert kept[501:] == [(i, "stdout", f"m {i}") for i in range(many - 499, many + 1)]
    assert kept[500][:2] == (501, "marker") and f"{many - 1000} lines omitted" in kept[500][2]
    assert MARKER in kept[500][2]
    ((omitted, count),) = pg_rows(
        database_url,
        "SELECT lines_omitted, line_count FROM tasks WHERE task_id = %s",
        (ids["many"],),
    )
    assert (omitted, count) == (many - 1000, 1001)
    # What `tasklog logs --json` shows is exactly what is stored, as text.
    for label in ("verbatim", "nul", "bytes", "huge"):
        shown = [r["message"] for r in _cli_logs(database_url, ids[label])]
        assert shown == messages(label), label
    print(
        f"\n10 MB line stored as {len(messages('huge')[0].encode())} bytes; {many} lines "
        f"stored as 500 + marker + 500 ({omitted} omitted); collector peak RSS "
        f"{peak_rss_kb(collector.pid) / 1024:.0f} MiB"
    )


@pytest.mark.parametrize("record_args", [False, True])
def test_task_args_are_stored_only_when_asked(
    procs: ProcessFactory,
    database_url: str,
    redis_url: str,
    spool_dir: Path,
    celery_client: Any,
    record_args: bool,
) -> None:
    procs.collector(
        database_url=database_url, spool_dir=spool_dir, redis_url=redis_url, ready="following"
    )
    env = {"TASKLOG_RECORD_ARGS": "true"} if record_args else {}
    procs.worker(redis_url=redis_url, spool_dir=spool_dir, pool="threads", concurrency=2, env=env)
    secret = "password=hunter2"
    result = celery_client.send_task(
        "demo.print_text", args=(f"{secret}\n",), kwargs={"stream": "stdout"}
    )
    assert result.get(timeout=30) == "ok"
    wait_for(lambda: _state(database_url, result.id) == "SUCCESS", message="task stored")
    ((args,),) = pg_rows(database_url, "SELECT args FROM tasks WHERE task_id = %s", (result.id,))
    if record_args:
        assert args == {"args": [f"{secret}\n"], "kwargs": {"stream": "stdout"}}
    else:
        assert args is None
