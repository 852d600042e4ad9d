"""The real daemons speak to systemd: READY once serving, STOPPING on SIGTERM, watchdog pings."""

from __future__ import annotations

import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ProcessFactory, free_port, wait_for


class Supervisor:
    """A bound datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def received(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    def saw(self, field: str) -> bool:
        return any(field in message.splitlines() for message in self.received())


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    sup = Supervisor(tmp_path / "notify.sock")
    try:
        yield sup
    finally:
        sup.sock.close()


def notify_env(supervisor: Supervisor) -> dict[str, str]:
    # A 2 s watchdog: pings come every second, so the test sees one quickly.
    return {"NOTIFY_SOCKET": str(supervisor.path), "WATCHDOG_USEC": "2000000"}


def test_collector_notifies_ready_watchdog_and_stopping(
    procs: ProcessFactory, supervisor: Supervisor, database_url: str, spool_dir: Path
) -> None:
    proc = procs.collector(
        database_url=database_url,
        spool_dir=spool_dir,
        env=notify_env(supervisor),
        ready="following",
    )
    wait_for(lambda: supervisor.saw("READY=1"), message="collector never sent READY=1")
    wait_for(lambda: supervisor.saw("WATCHDOG=1"), message="collector never pinged the watchdog")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert supervisor.saw("STOPPING=1")


def test_api_notifies_ready_watchdog_and_stopping(
    procs: ProcessFactory, supervisor: Supervisor, database_url: str, redis_url: str
) -> None:
    port = free_port()
    env = {
        **notify_env(supervisor),
        "TASKLOG_DATABASE_URL": database_url,
        "TASKLOG_REDIS_URL": redis_url,
        "TASKLOG_API_PORT": str(port),
    }
    proc = procs.start(
        "api", [sys.executable, "-m", "tasklog", "api"], env=env, ready="listening on http"
    )
    wait_for(lambda: supervisor.saw("READY=1"), message="api never sent READY=1")
    wait_for(lambda: supervisor.saw("WATCHDOG=1"), message="api never pinged the watchdog")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert supervisor.saw("STOPPING=1")
