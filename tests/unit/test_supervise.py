"""`tasklog.core.supervise.restarting`: a side task that fails is started again, each failure
logged once, and a cancel is never swallowed."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tasklog.core.supervise import restarting


async def test_a_failing_task_is_restarted_and_each_failure_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[int] = []
    down: list[str] = []

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) <= 3:
            raise RuntimeError("same cause")  # three times the same failure
        if len(runs) == 4:
            raise ValueError("another cause")
        # the fifth run succeeds and returns (its stop came)

    caplog.set_level(logging.DEBUG)
    log = logging.getLogger("test.supervise")
    async with asyncio.timeout(10):
        await restarting(
            "the flaky task",
            flaky,
            first_delay=0.001,
            max_delay=0.004,
            on_down=lambda exc: down.append(str(exc)),
            logger=log,
        )
    assert len(runs) == 5
    assert down == ["same cause"] * 3 + ["another cause"]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage().split(";")[0] for r in errors] == [
        "the flaky task failed (RuntimeError: same cause)",
        "the flaky task failed (ValueError: another cause)",
    ]
    assert all(r.exc_info is not None for r in errors)
    repeats = [r for r in caplog.records if r.levelno == logging.DEBUG and "again" in r.message]
    assert len(repeats) == 2


async def test_cancel_goes_through() -> None:
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(restarting("forever", forever))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
