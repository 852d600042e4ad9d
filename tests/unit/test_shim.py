"""The capture shim without Celery's worker: TaskCapture, routing by task, disabled mode."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from capture_shim import TerminalLoggingTask, capture, spool
from capture_shim.capture import Stats, TaskCapture
from capture_shim.config import ShimConfig
from tests.helpers import REPO_ROOT


def _config(spool_dir: Path | str, **changes: Any) -> ShimConfig:
    values: dict[str, Any] = {
        "enabled": True,
        "spool_dir": str(spool_dir),
        "max_lines": 1000,
        "max_line_bytes": 16384,
        "record_args": False,
    }
    values.update(changes)
    return ShimConfig(**values)


def _records(spool_dir: Path) -> list[dict[str, Any]]:
    (path,) = spool_dir.glob("*" + spool.SUFFIX)
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    return [json.loads(line) for line in raw.splitlines()]


def _lines(records: list[dict[str, Any]]) -> list[tuple[int, str, str]]:
    return [(r["n"], r["s"], r["m"]) for r in records if r["k"] == spool.LINE]


def _capture(spool_dir: Path, task_id: str = "t1", **changes: Any) -> TaskCapture:
    return TaskCapture(_config(spool_dir, **changes), task_id, {"task_id": task_id, "name": "n"})


@pytest.fixture
def routed(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    """Captured streams for a test that routes them; the log handler goes afterwards.

    The test itself calls `capture.ensure_routing()`: pytest re-installs its own capture
    streams between fixture setup and the test call, as Celery does when a worker starts.
    """
    try:
        yield capsys
    finally:
        logging.root.removeHandler(capture._log_handler)


def test_lines_are_split_on_newlines_across_writes(spool_dir: Path) -> None:
    cap = _capture(spool_dir)
    cap.write(spool.STDOUT, "a\nb")
    cap.write(spool.STDOUT, "c\n\nd\n")
    cap.write(spool.STDERR, "err ")
    cap.write(spool.STDOUT, "e\n")
    cap.write(spool.STDERR, "line\n")
    cap.finish("SUCCESS")
    records = _records(spool_dir)
    assert records[0]["k"] == spool.START and records[0]["v"] == spool.VERSION
    assert records[0]["task_id"] == "t1"
    assert _lines(records) == [
        (1, "stdout", "a"),
        (2, "stdout", "bc"),
        (3, "stdout", ""),
        (4, "stdout", "d"),
        (5, "stdout", "e"),
        (6, "stderr", "err line"),
    ]
    end = records[-1]
    assert end["k"] == spool.END and end["state"] == "SUCCESS"
    assert end["lines"] == 6 and end["errors"] == 0
    assert end["runtime"] >= 0


def test_partial_lines_are_flushed_at_the_end(spool_dir: Path) -> None:
    cap = _capture(spool_dir)
    cap.write(spool.STDOUT, "done 1\nno newline")
    cap.write(spool.STDERR, "err without newline")
    cap.finish("SUCCESS")
    records = _records(spool_dir)
    assert _lines(records) == [
        (1, "stdout", "done 1"),
        (2, "stdout", "no newline"),
        (3, "stderr", "err without newline"),
    ]
    assert records[-1]["k"] == spool.END  # flushed before the end record


def test_long_lines_are_cut_with_a_marker(spool_dir: Path) -> None:
    cap = _capture(spool_dir, max_line_bytes=64)
    cap.write(spool.STDOUT, "x" * 100 + "\n")
    cap.write(spool.STDOUT, "é" * 50 + "\n")  # 100 bytes; the cut must not split a character
    cap.write(spool.STDOUT, "y" * 64 + "\n")  # exactly at the limit: kept whole
    cap.finish("SUCCESS")
    messages = [m for _, _, m in _lines(_records(spool_dir))]
    assert messages == [
        "x" * 64 + " … [line cut: 36 more bytes]",
        "é" * 32 + " … [line cut: 36 more bytes]",
        "y" * 64,
    ]


def test_a_partial_line_that_grows_too_long_is_emitted(spool_dir: Path) -> None:
    # A progress bar redrawn with "\r" and no newline must not grow in memory forever.
    cap = _capture(spool_dir, max_line_bytes=64)
    for i in range(30):
        cap.write(spool.STDOUT, f"\r{i:3d}%")
    cap.finish("SUCCESS")
    lines = _lines(_records(spool_dir))
    assert len(lines) >= 2
    assert "".join(m.split(" … ")[0] for _, _, m in lines).replace("\r", "").strip()


def test_failure_end_record_carries_exception_and_traceback(spool_dir: Path) -> None:
    cap = _capture(spool_dir)
    try:
        raise ValueError("bad value")
    except ValueError as exc:
        cap.finish("FAILURE", exc, "Traceback (most recent call last):\nValueError: bad value")
    end = _records(spool_dir)[-1]
    assert end["state"] == "FAILURE"
    assert end["exc_type"] == "ValueError" and end["exc_message"] == "bad value"
    assert end["traceback"].endswith("ValueError: bad value")


def test_progress_records(spool_dir: Path) -> None:
    cap = _capture(spool_dir)
    cap.progress(42.0, "halfway", "PROGRESS")
    cap.finish("SUCCESS")
    (record,) = [r for r in _records(spool_dir) if r["k"] == spool.PROGRESS]
    assert record["p"] == 42.0 and record["msg"] == "halfway" and record["state"] == "PROGRESS"


def test_unwritable_spool_dir_sends_output_to_the_original_stream(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Tests run as root, where permissions stop nothing: a regular file as parent does.
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    before = Stats.spool_errors
    cap = _capture(afile / "spool")
    cap.write(spool.STDOUT, "to stdout\n")
    cap.write(spool.STDERR, "to stderr\n")
    cap.finish("SUCCESS")  # must not raise
    out, err = capsys.readouterr()
    assert "to stdout\n" in out
    assert "to stderr\n" in err
    assert Stats.spool_errors >= before + 2
    assert list(tmp_path.iterdir()) == [afile]


def test_concurrent_tasks_in_threads_do_not_mix(
    spool_dir: Path, routed: pytest.CaptureFixture[str]
) -> None:
    count, threads = 200, 8
    barrier = threading.Barrier(threads)

    def task(n: int) -> None:
        cap = _capture(spool_dir / str(n), task_id=f"task-{n}")
        cap.activate()
        try:
            barrier.wait()
            for i in range(1, count + 1):
                print(f"task {n} line {i}")
                if i % 50 == 0:
                    print(f"task {n} err {i}", file=sys.stderr)
                    logging.getLogger("tests.shim").warning("task %d log %d", n, i)
        finally:
            cap.finish("SUCCESS")
            cap.deactivate()

    for n in range(threads):
        (spool_dir / str(n)).mkdir()
    capture.ensure_routing()
    workers = [threading.Thread(target=task, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    print("outside any task")
    out, _ = routed.readouterr()
    assert out == "outside any task\n"
    for n in range(threads):
        lines = _lines(_records(spool_dir / str(n)))
        assert [seq for seq, _, _ in lines] == list(range(1, len(lines) + 1))
        assert [m for _, s, m in lines if s == "stdout"] == [
            f"task {n} line {i}" for i in range(1, count + 1)
        ]
        assert [m for _, s, m in lines if s == "stderr"] == [
            f"task {n} err {i}" for i in range(50, count + 1, 50)
        ]
        logs = [m for _, s, m in lines if s == "log"]
        expected = [f"task {n} log {i}" for i in range(50, count + 1, 50)]
        assert len(logs) == len(expected)
        assert all(m.endswith(e) for m, e in zip(logs, expected, strict=True)), logs


def test_threads_of_one_task_printing_at_once_lose_nothing(
    spool_dir: Path, routed: pytest.CaptureFixture[str]
) -> None:
    """A task's threads print into one capture at once (the GIL handed over as often as it
    can be): their pieces may share a line, as on a terminal, but every piece is in exactly
    one record, each newline ends exactly one, and the records are in sequence order."""
    count, threads = 2000, 4
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    cap = _capture(spool_dir)
    capture.ensure_routing()
    cap.activate()
    barrier = threading.Barrier(threads)

    def printer(n: int) -> None:
        barrier.wait()
        for i in range(count):
            print(f"<{n}.{i}>")  # two writes: the piece, then its newline

    try:
        # Each thread in a copy of this context: the capture is the current one there too.
        workers = [
            threading.Thread(target=contextvars.copy_context().run, args=(printer, n))
            for n in range(threads)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join(30)
    finally:
        sys.setswitchinterval(interval)
        cap.finish("SUCCESS")
        cap.deactivate()
    lines = _lines(_records(spool_dir))
    assert [seq for seq, _, _ in lines] == list(range(1, count * threads + 1))
    text = "".join(m for _, _, m in lines)
    pieces = re.findall(r"<[0-9]+\.[0-9]+>", text)
    assert len("".join(pieces)) == len(text)
    assert sorted(pieces) == sorted(f"<{n}.{i}>" for n in range(threads) for i in range(count))


def test_binary_writes_are_decoded_with_visible_escapes(
    spool_dir: Path, routed: pytest.CaptureFixture[str]
) -> None:
    capture.ensure_routing()
    cap = _capture(spool_dir)
    cap.activate()
    try:
        sys.stdout.buffer.write(b"bytes \xff\xfe ok\n")
        sys.stdout.write("nul \x00 end\n")
    finally:
        cap.finish("SUCCESS")
        cap.deactivate()
    assert [m for _, _, m in _lines(_records(spool_dir))] == ["bytes \\xff\\xfe ok", "nul \x00 end"]


# -- through a Celery task, run in this process ------------------------------------------------


def _app() -> Celery:
    app = Celery("shim-tests", set_as_current=False)
    app.conf.task_always_eager = True
    return app


def test_terminal_logging_task_writes_a_spool_file(
    spool_dir: Path, monkeypatch: pytest.MonkeyPatch, routed: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TASKLOG_SPOOL_DIR", str(spool_dir))
    app = _app()

    @app.task(base=TerminalLoggingTask, bind=True, name="t.ok")
    def ok(self: Any) -> str:
        print("hello")
        return "result"

    assert ok.apply(task_id="celery-id-1").get() == "result"
    records = _records(spool_dir)
    assert records[0]["task_id"] == "celery-id-1" and records[0]["name"] == "t.ok"
    assert _lines(records) == [(1, "stdout", "hello")]
    assert records[-1]["state"] == "SUCCESS"


def test_prints_of_several_pieces_make_one_record_and_nothing_is_lost_on_flush(
    spool_dir: Path, monkeypatch: pytest.MonkeyPatch, routed: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TASKLOG_SPOOL_DIR", str(spool_dir))
    app = _app()

    @app.task(base=TerminalLoggingTask, bind=True, name="t.pieces")
    def pieces(self: Any) -> None:
        print("x", 42, "y")
        print("a", "b", sep="-", end="|")
        sys.stdout.flush()  # a flush keeps the open line: it ends with its newline
        print("c", flush=True)
        print("progress 10%", end="\r", flush=True)
        print("progress 99%", end="", flush=True)  # the task ends mid-line

    pieces.apply(task_id="pieces-1").get()
    records = _records(spool_dir)
    assert _lines(records) == [
        (1, "stdout", "x 42 y"),
        (2, "stdout", "a-b|c"),
        (3, "stdout", "progress 10%\rprogress 99%"),
    ]
    assert records[-1]["k"] == spool.END and records[-1]["lines"] == 3
    assert routed.readouterr().out == ""


def test_disabled_mode_writes_nothing(
    spool_dir: Path, monkeypatch: pytest.MonkeyPatch, routed: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TASKLOG_SPOOL_DIR", str(spool_dir))
    monkeypatch.setenv("TASKLOG_ENABLED", "false")
    assert ShimConfig.from_env().enabled is False
    app = _app()

    @app.task(base=TerminalLoggingTask, bind=True, name="t.disabled")
    def job(self: Any) -> str:
        print("not captured")
        return "result"

    assert job.apply().get() == "result"
    assert list(spool_dir.iterdir()) == []
    assert "not captured" in routed.readouterr().out


def test_task_with_unwritable_spool_dir_returns_its_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, routed: pytest.CaptureFixture[str]
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    monkeypatch.setenv("TASKLOG_SPOOL_DIR", str(afile / "spool"))
    before = Stats.spool_errors
    app = _app()

    @app.task(base=TerminalLoggingTask, bind=True, name="t.unwritable")
    def job(self: Any) -> int:
        print("still printed")
        return 42

    assert job.apply().get() == 42
    assert "still printed" in routed.readouterr().out
    assert Stats.spool_errors > before


# -- connecting: nothing at import, once per process ------------------------------------------

_CONNECTIONS = textwrap.dedent("""
    import json, os
    forks = []
    register = os.register_at_fork
    os.register_at_fork = lambda **hooks: (forks.append(sorted(hooks)), register(**hooks))[1]
    from celery import Celery, signals
    NAMES = ["task_prerun", "task_postrun", "task_failure", "task_revoked", "task_received",
             "worker_init", "worker_process_init"]
    def seen(): return {n: len(getattr(signals, n).receivers) for n in NAMES} | {"fork": len(forks)}
    seen_at = {"before": seen()}
    import capture_shim, capture_shim.hooks, capture_shim.fdcapture, capture_shim.capture
    seen_at["imported"] = seen()
    app = Celery("a", set_as_current=False)
    capture_shim.install(app)
    wrapped = app.Task.update_state
    seen_at["installed"] = seen()
    capture_shim.install(app)
    seen_at["twice"] = seen()
    other = Celery("b", set_as_current=False)
    @other.task(base=capture_shim.TerminalLoggingTask, name="t")
    def job(): pass
    job.name  # makes the task class
    seen_at["task class"] = seen()
    print(json.dumps({"seen": seen_at, "wrapped once": app.Task.update_state is wrapped}))
""")


def test_importing_connects_nothing_and_connecting_twice_adds_nothing() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _CONNECTIONS],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "TASKLOG_ENABLED": "true"},
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    seen = report["seen"]
    # Importing after Celery connects one thing: the worker_init check that warns when the
    # worker's app was never installed (capture_shim/__init__.py).
    assert seen["imported"] == {**seen["before"], "worker_init": seen["before"]["worker_init"] + 1}
    added = {name: seen["installed"][name] - seen["imported"][name] for name in seen["before"]}
    assert added == {
        "task_prerun": 1,
        "task_postrun": 1,
        "task_failure": 1,
        "task_revoked": 1,
        "task_received": 1,
        "worker_init": 1,
        "worker_process_init": 1,
        "fork": 1,
    }
    assert seen["twice"] == seen["installed"]
    assert seen["task class"] == seen["installed"]  # the process hooks were there already
    assert report["wrapped once"]


def test_a_task_class_connects_the_process_hooks_alone() -> None:
    script = _CONNECTIONS.replace("capture_shim.install(app)", "pass")
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])["seen"]
    assert seen["installed"] == seen["imported"]
    added = {name: seen["task class"][name] - seen["imported"][name] for name in seen["before"]}
    # The process hooks: the pool, forks, and what the worker's main process says of a run
    # killed in a pool child (capture_shim.verdict), which concerns a task class's runs too.
    assert added == {
        "task_prerun": 0,
        "task_postrun": 0,
        "task_failure": 1,
        "task_revoked": 1,
        "task_received": 1,
        "worker_init": 1,
        "worker_process_init": 1,
        "fork": 1,
    }
