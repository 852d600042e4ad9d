"""`tasklog demo`'s choice of the API port, against ports really taken."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tasklog.core.errors import TasklogError
from tasklog.demo import stack
from tasklog.demo.embedded import free_port


@pytest.fixture
def taken() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_the_default_port_taken_another_is_chosen_and_said(
    taken: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(stack, "DEFAULT_API_PORT", taken)
    port = stack._api_port({})
    assert port != taken
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # really free
    out = capsys.readouterr().out
    assert out == (
        f"tasklog demo: port {taken} on 127.0.0.1 is in use; the API listens on port {port} "
        "instead\n"
    )


def test_a_given_port_taken_is_one_error(taken: int) -> None:
    with pytest.raises(TasklogError, match=rf"^port {taken} on 127.0.0.1 is in use"):
        stack._api_port({"TASKLOG_API_PORT": str(taken)})


def test_a_given_free_port_is_used() -> None:
    port = free_port()
    assert stack._api_port({"TASKLOG_API_PORT": str(port)}) == port


@pytest.mark.parametrize("value", ["http", "-1x"])
def test_a_port_that_is_not_a_number_is_one_error(value: str) -> None:
    with pytest.raises(TasklogError, match="is not a port number"):
        stack._api_port({"TASKLOG_API_PORT": value})


def test_a_host_that_is_not_here_is_one_error() -> None:
    # 192.0.2.0/24 is TEST-NET-1: never an address of this machine.
    with pytest.raises(TasklogError, match=r"the API cannot listen on 192\.0\.2\.1"):
        stack._api_port({"TASKLOG_API_HOST": "192.0.2.1", "TASKLOG_API_PORT": str(free_port())})
