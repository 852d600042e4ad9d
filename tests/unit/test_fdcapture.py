"""fd-level capture in this process, without a worker: real pipes, real child processes."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.signals import worker_process_init

from capture_shim import fdcapture, hooks, spool
from capture_shim.capture import TaskCapture
from capture_shim.config import ShimConfig
from capture_shim.fdcapture import FdSession, FdStats
from tests.helpers import wait_for


def _config(spool_dir: Path, **changes: Any) -> ShimConfig:
    values: dict[str, Any] = {
        "enabled": True,
        "spool_dir": str(spool_dir),
        "max_lines": 1000,
        "max_line_bytes": 16384,
        "record_args": False,
    }
    values.update(changes)
    return ShimConfig(**values)


def _capture(spool_dir: Path) -> TaskCapture:
    return TaskCapture(_config(spool_dir), "t1", {"task_id": "t1", "name": "n"})


def _lines(spool_dir: Path) -> list[tuple[int, str, str]]:
    (path,) = spool_dir.glob("*" + spool.SUFFIX)
    records = [json.loads(line) for line in path.read_bytes().splitlines()]
    return [(r["n"], r["s"], r["m"]) for r in records if r["k"] == spool.LINE]


def _lines_so_far(spool_dir: Path) -> list[tuple[int, str, str]]:
    (path,) = spool_dir.glob("*" + spool.SUFFIX)
    records = [json.loads(line) for line in path.read_bytes().splitlines()]
    return [(r["n"], r["s"], r["m"]) for r in records if r["k"] == spool.LINE][1:]


def _fd_identity(fd: int) -> tuple[int, int, bool]:
    info = os.fstat(fd)
    return info.st_dev, info.st_ino, os.get_inheritable(fd)


@pytest.fixture
def session(spool_dir: Path) -> Iterator[Callable[..., FdSession]]:
    """Starts a session on a fresh capture when called, in the test's body: pytest points fd
    1/2 at its own files again between a fixture's setup and the test."""
    started: list[FdSession] = []

    def start(tee: bool = False) -> FdSession:
        sess = FdSession(_capture(spool_dir), tee=tee)
        sess.start()
        started.append(sess)
        return sess

    yield start
    for sess in started:
        sess.end()  # a second end is a no-op


def test_fd_output_is_captured_in_order_with_python_writes(
    session: Callable[..., FdSession], spool_dir: Path
) -> None:
    before = (_fd_identity(1), _fd_identity(2))
    sess = session()
    sess.cap.route(spool.STDOUT, "py before\n")
    subprocess.run(["sh", "-c", "echo out; echo err >&2"], check=True)
    os.write(1, b"os write 1\n")
    os.write(2, b"os write 2\n")
    libc = ctypes.CDLL(None)
    libc.printf(b"c printf %d\n", 42)
    libc.fflush(None)
    sess.cap.route(spool.STDOUT, "py after\n")
    sess.cap.route(spool.STDERR, "py err\n")
    sess.end()
    assert (_fd_identity(1), _fd_identity(2)) == before
    sess.cap.finish("SUCCESS")

    lines = _lines(spool_dir)
    out = [m for _, s, m in lines if s == spool.STDOUT]
    err = [m for _, s, m in lines if s == spool.STDERR]
    assert out == ["py before", "out", "os write 1", "c printf 42", "py after"]
    assert err == ["err", "os write 2", "py err"]
    seq = {m: n for n, _, m in lines}
    assert [n for n, _, _ in lines] == list(range(1, len(lines) + 1))
    fd_level = ("out", "err", "os write 1", "os write 2", "c printf 42")
    assert all(seq["py before"] < seq[m] < seq["py after"] for m in fd_level)


def test_fd_output_written_the_instant_before_a_print_comes_first(
    session: Callable[..., FdSession], spool_dir: Path
) -> None:
    """C code writes to fd 1 without letting go of the GIL (PyDLL keeps it), a print follows
    at once, and no thread switch happens for the whole loop: the reader, woken by the pipe,
    waits for the GIL in vain. Each fd line must still come before the print after it."""
    sess = session()
    libc_write = ctypes.PyDLL(None).write
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    try:
        for i in range(200):
            line = f"fd {i}\n".encode()
            libc_write(1, line, len(line))
            sess.cap.route(spool.STDOUT, f"py {i}")
            sess.cap.route(spool.STDOUT, "\n")
    finally:
        sys.setswitchinterval(switch)
    sess.end()
    sess.cap.finish("SUCCESS")
    expected = [m for i in range(200) for m in (f"fd {i}", f"py {i}")]
    assert [m for _, _, m in _lines(spool_dir)] == expected


def test_a_childs_output_comes_before_the_next_print(
    session: Callable[..., FdSession], spool_dir: Path
) -> None:
    sess = session()
    sess.cap.route(spool.STDOUT, "first\n")
    subprocess.run(["sh", "-c", "echo from a child"], check=True)
    sess.cap.route(spool.STDOUT, "after the child\n")
    sess.end()
    sess.cap.finish("SUCCESS")
    assert [m for _, _, m in _lines(spool_dir)] == ["first", "from a child", "after the child"]


def test_a_print_of_several_arguments_is_one_record_in_order(
    session: Callable[..., FdSession], spool_dir: Path
) -> None:
    sess = session()
    os.write(1, b"fd before\n")
    for piece in ("x", " ", "42", " ", "y", "\n"):  # print("x", 42, "y")
        sess.cap.route(spool.STDOUT, piece)
    sess.cap.route(spool.STDOUT, "no newline at the end")
    sess.end()
    sess.cap.finish("SUCCESS")
    assert _lines(spool_dir) == [
        (1, "stdout", "fd before"),
        (2, "stdout", "x 42 y"),
        (3, "stdout", "no newline at the end"),
    ]


def test_descriptors_are_back_after_the_session(
    session: Callable[..., FdSession], spool_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    before = (_fd_identity(1), _fd_identity(2))
    sess = session()
    assert (_fd_identity(1), _fd_identity(2)) != before
    os.write(1, b"inside\n")
    sess.end()
    sess.cap.finish("SUCCESS")
    assert (_fd_identity(1), _fd_identity(2)) == before
    os.write(1, b"outside\n")
    seen = capfd.readouterr()
    assert "outside" in seen.out and "inside" not in seen.out
    assert [m for _, _, m in _lines(spool_dir)] == ["inside"]


def test_utf8_split_between_writes_and_invalid_bytes(
    session: Callable[..., FdSession], spool_dir: Path
) -> None:
    sess = session()
    data = "héllo wörld ✓\n".encode()
    for i in range(len(data)):  # one byte per write: every character split
        os.write(1, data[i : i + 1])
    os.write(2, b"bad \xff\xfe end\n")
    os.write(1, b"ends mid-char " + "✓".encode()[:2])
    sess.end()
    sess.cap.finish("SUCCESS")
    messages = {s: [m for _, st, m in _lines(spool_dir) if st == s] for s in ("stdout", "stderr")}
    assert messages["stdout"] == ["héllo wörld ✓", "ends mid-char \\xe2\\x9c"]
    assert messages["stderr"] == ["bad \\xff\\xfe end"]


def test_a_burst_from_a_child_is_drained_without_deadlock(
    session: Callable[..., FdSession], spool_dir: Path
) -> None:
    count = 50_000  # ~5 MB, far beyond a pipe's buffer
    script = (
        "import sys; sys.stdout.write(''.join("
        f"f'burst {{i:07d}} ' + 'x' * 86 + '\\n' for i in range(1, {count + 1})))"
    )
    sess = session()
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    sess.end()
    elapsed = time.monotonic() - started
    sess.cap.finish("SUCCESS")
    lines = _lines(spool_dir)
    assert len(lines) == count
    assert lines[0][2].startswith("burst 0000001 ")
    assert lines[-1][2].startswith(f"burst {count:07d} ")
    assert elapsed < 30


def test_a_child_left_running_is_detached(
    session: Callable[..., FdSession], spool_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    sess = session()
    os.write(1, b"before\n")
    child = subprocess.Popen(["sh", "-c", "echo early; sleep 1.5; echo late; echo late-err >&2"])
    try:
        wait_for(
            lambda: "early" in [m for _, _, m in _lines(spool_dir)],
            timeout=10,
            message="the child's first line",
        )
        detached = FdStats.detached
        started = time.monotonic()
        sess.end()
        assert time.monotonic() - started < fdcapture.DETACH_GRACE + 1
        assert FdStats.detached == detached + 1
        sess.cap.finish("SUCCESS")
        lines = _lines(spool_dir)
        assert [m for _, _, m in lines[:2]] == ["before", "early"]
        assert lines[2][1] == spool.LOG and "child process still holds" in lines[2][2]
        assert len(lines) == 3

        # The child's later output goes to the original descriptors, not to the task.
        seen: dict[str, str] = {"out": "", "err": ""}

        def forwarded() -> bool:
            now = capfd.readouterr()
            seen["out"] += now.out
            seen["err"] += now.err
            return "late" in seen["out"] and "late-err" in seen["err"]

        wait_for(forwarded, timeout=10, message="the child's late output on the original fds")
        assert child.wait(10) == 0
        assert "late" not in [m for _, _, m in _lines(spool_dir)]
    finally:
        child.kill()
        child.wait()


def test_a_task_that_closes_its_descriptors(
    session: Callable[..., FdSession], spool_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    before = (_fd_identity(1), _fd_identity(2))
    sess = session()
    os.write(1, b"still here\n")
    os.close(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    sess.cap.route(spool.STDOUT, "python level\n")
    sess.end()
    sess.cap.finish("SUCCESS")
    assert (_fd_identity(1), _fd_identity(2)) == before
    os.write(1, b"out again\n")
    os.write(2, b"err again\n")
    seen = capfd.readouterr()
    assert "out again" in seen.out and "err again" in seen.err
    assert [m for _, _, m in _lines(spool_dir)] == ["still here", "python level"]


def test_tee_echoes_to_the_original_descriptors(
    session: Callable[..., FdSession], spool_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    sess = session(tee=True)
    os.write(1, b"fd line\n")
    sess.cap.route(spool.STDERR, "py line\n")
    sess.end()
    sess.cap.finish("SUCCESS")
    seen = capfd.readouterr()
    assert "fd line" in seen.out and "py line" in seen.err
    assert sorted(m for _, _, m in _lines(spool_dir)) == ["fd line", "py line"]


def test_where_fd_capture_is_safe() -> None:
    assert fdcapture._is_safe_pool("prefork") and fdcapture._is_safe_pool("solo")
    assert fdcapture._is_safe_pool("processes")
    assert not fdcapture._is_safe_pool("threads")
    assert not fdcapture._is_safe_pool("gevent") and not fdcapture._is_safe_pool("eventlet")
    assert not fdcapture._is_safe_pool(None)

    hooks.connect_process_hooks()  # what install() and TerminalLoggingTask do
    saved = fdcapture._pool_safe
    try:
        fdcapture._pool_safe = None
        assert not fdcapture.fd_capture_safe()  # no worker said which pool
        worker_process_init.send(sender="test")  # what a prefork child hears
        assert fdcapture.fd_capture_safe()
        in_thread: list[bool] = []
        thread = threading.Thread(target=lambda: in_thread.append(fdcapture.fd_capture_safe()))
        thread.start()
        thread.join(5)
        assert in_thread == [False]
    finally:
        fdcapture._pool_safe = saved


def test_an_oserror_at_start_falls_back_to_python_level(tmp_path: Path) -> None:
    """Run in a child process whose descriptor limit leaves no room for the pipes."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    script = textwrap.dedent(f"""
        import os, resource, sys
        from celery.signals import worker_process_init
        from capture_shim import fdcapture, hooks, spool
        from capture_shim.capture import TaskCapture
        from capture_shim.config import ShimConfig

        hooks.connect_process_hooks()
        worker_process_init.send(sender="test")
        config = ShimConfig(True, {str(spool_dir)!r}, 1000, 16384, False)
        cap = TaskCapture(config, "t1", {{"task_id": "t1"}})
        used = max(int(n) for n in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (used + 2, used + 2))
        for fd in range(used + 1):  # leave exactly two free numbers: a dup and one pipe end
            try:
                os.fstat(fd)
            except OSError:
                os.dup2(0, fd)
        session = fdcapture.begin(cap, config)
        cap.route(spool.STDOUT, "python line\\n")
        os.write(1, b"fd line\\n")
        fdcapture.end(cap)
        cap.finish("SUCCESS")
        print(session is None, fdcapture.FdStats.fallbacks, flush=True)
    """)
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "True 1"
    assert "fd line" in result.stdout
    assert "fd-level capture could not start" in result.stderr
    assert [m for _, _, m in _lines(spool_dir)] == ["python line"]


def test_a_process_forked_by_the_task_writes_through_the_pipes(
    session: Callable[..., FdSession], spool_dir: Path
) -> None:
    sess = session()
    sess.cap.route(spool.STDOUT, "parent before\n")
    pid = os.fork()
    if pid == 0:  # the child: no reader thread here, its Python-level text goes to fd 1
        try:
            sess.cap.route(spool.STDOUT, "from the child\n")
        finally:
            os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    sess.cap.route(spool.STDOUT, "parent after\n")
    sess.end()
    sess.cap.finish("SUCCESS")
    assert _lines(spool_dir) == [
        (1, "stdout", "parent before"),
        (2, "stdout", "from the child"),
        (3, "stdout", "parent after"),
    ]


def test_tee_without_fd_capture_echoes_to_the_replaced_streams(
    spool_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cap = _capture(spool_dir)
    assert fdcapture.begin(cap, _config(spool_dir, capture_fd=False, tee=True)) is None
    cap.route(spool.STDOUT, "to both\n")
    cap.route(spool.STDERR, "err to both\n")
    fdcapture.end(cap)
    cap.finish("SUCCESS")
    seen = capsys.readouterr()
    assert seen.out == "to both\n" and seen.err == "err to both\n"
    assert [m for _, _, m in _lines(spool_dir)] == ["to both", "err to both"]
