"""tasklog.core.sdnotify against a real AF_UNIX datagram socket, as systemd listens."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tasklog.core import sdnotify


class Receiver:
    """The supervisor's end: a bound datagram socket that collects what was sent."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def pending(self) -> list[str]:
        """Every datagram already queued, without waiting."""
        out = []
        while True:
            try:
                out.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return out

    async def next(self, timeout: float = 5.0) -> str:
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self.sock, 4096), timeout)
        return data.decode()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    try:
        yield Receiver(sock)
    finally:
        sock.close()


def test_without_notify_socket_everything_is_a_quiet_no_op() -> None:
    assert sdnotify.ready("up") is False
    assert sdnotify.stopping() is False
    assert sdnotify.status("x") is False
    assert sdnotify.watchdog() is False
    assert sdnotify.extend_timeout(10) is False
    assert sdnotify.watchdog_interval() is None


def test_ready_with_status(receiver: Receiver) -> None:
    assert sdnotify.ready("collecting from /var/spool/tasklog") is True
    assert receiver.pending() == ["READY=1\nSTATUS=collecting from /var/spool/tasklog\n"]


def test_each_message(receiver: Receiver) -> None:
    assert sdnotify.ready()
    assert sdnotify.status("3 files behind")
    assert sdnotify.watchdog()
    assert sdnotify.extend_timeout(1.5)
    assert sdnotify.stopping("draining")
    assert receiver.pending() == [
        "READY=1\n",
        "STATUS=3 files behind\n",
        "WATCHDOG=1\n",
        "EXTEND_TIMEOUT_USEC=1500000\n",
        "STOPPING=1\nSTATUS=draining\n",
    ]


def test_notify_upper_cases_keys(receiver: Receiver) -> None:
    assert sdnotify.notify(status="a", errno=5)
    assert receiver.pending() == ["STATUS=a\nERRNO=5\n"]


def test_a_newline_in_a_value_cannot_smuggle_an_assignment(receiver: Receiver) -> None:
    sdnotify.status("bad\nREADY=1")
    assert receiver.pending() == ["STATUS=bad READY=1\n"]


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"tasklog-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.watchdog() is True
        assert sock.recv(4096) == b"WATCHDOG=1\n"


def test_a_vanished_supervisor_never_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert sdnotify.ready() is False
    assert sdnotify.watchdog() is False


def test_a_relative_or_foreign_address_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    for value in ("relative.sock", "vsock:2:1234", ""):
        monkeypatch.setenv("NOTIFY_SOCKET", value)
        assert sdnotify.ready() is False


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert sdnotify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 30.0
    # Set for another process (we inherited it): not ours to ping.
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_PID", "nope")
    assert sdnotify.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("0", "-5", "soon", ""):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert sdnotify.watchdog_interval() is None


async def test_watchdog_loop_pings_at_half_the_interval(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # 0.2 s: a ping every 0.1 s
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(sdnotify.watchdog_loop(stop), name="watchdog")
    started = loop.time()
    pings = [await receiver.next() for _ in range(3)]
    elapsed = loop.time() - started
    assert pings == ["WATCHDOG=1\n"] * 3
    # First ping at once, then two periods of 0.1 s; far less than the 0.2 s timeout each.
    assert 0.15 <= elapsed < 2.0
    stop.set()
    await asyncio.wait_for(task, 1.0)


async def test_watchdog_loop_stops_promptly_when_asked(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", str(60 * 1_000_000))  # a 30 s period
    stop = asyncio.Event()
    task = asyncio.create_task(sdnotify.watchdog_loop(stop), name="watchdog")
    assert await receiver.next() == "WATCHDOG=1\n"
    stop.set()
    await asyncio.wait_for(task, 1.0)


async def test_watchdog_loop_without_watchdog_waits_for_stop(receiver: Receiver) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(sdnotify.watchdog_loop(stop), name="watchdog")
    await asyncio.sleep(0)
    assert not task.done()
    stop.set()
    await asyncio.wait_for(task, 1.0)
    assert receiver.pending() == []


async def test_watchdog_loop_skips_pings_while_unhealthy(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    asked = asyncio.Queue[None]()
    state: dict[str, Any] = {"checks": 0, "well": False}

    def healthy() -> bool:
        asked.put_nowait(None)
        state["checks"] += 1
        if state["checks"] == 2:
            raise RuntimeError("health check broke")
        return bool(state["well"])

    stop = asyncio.Event()
    task = asyncio.create_task(sdnotify.watchdog_loop(stop, healthy=healthy), name="watchdog")
    for _ in range(3):
        await asyncio.wait_for(asked.get(), 5.0)
    assert receiver.pending() == []
    state["well"] = True  # healthy again: pings resume
    assert await receiver.next() == "WATCHDOG=1\n"
    stop.set()
    await asyncio.wait_for(task, 1.0)
