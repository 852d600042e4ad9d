"""The spool directory's file watcher (`collector.watcher`), on a real directory."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Coroutine
from pathlib import Path

import pytest

from collector import watcher

Follow = Callable[[Path, int, Callable[[set[str]], None]], Coroutine[None, None, None]]
#: inotify on Linux, and the polled watcher other systems get.
WAYS = [pytest.param(watcher.follow, id="follow"), pytest.param(watcher._polled, id="polled")]


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("follow", WAYS)
def test_files_created_and_written_are_reported_and_files_deleted_are_not(
    tmp_path: Path, follow: Follow
) -> None:
    reported: set[str] = set()

    async def run() -> None:
        task = asyncio.create_task(follow(tmp_path, 1, reported.update))
        await asyncio.sleep(0.2)  # watching
        old = tmp_path / "old.jsonl"
        old.write_bytes(b"{}\n")
        await until(lambda: "old.jsonl" in reported, "the new file")
        reported.clear()
        with (tmp_path / "old.jsonl").open("ab") as f:
            f.write(b"{}\n")
        (tmp_path / "elsewhere").write_bytes(b"{}\n")
        os.rename(tmp_path / "elsewhere", tmp_path / "moved-in.jsonl")
        await until(lambda: {"old.jsonl", "moved-in.jsonl"} <= reported, "the changes")
        reported.clear()
        old.unlink()
        (tmp_path / "after.jsonl").write_bytes(b"{}\n")
        await until(lambda: "after.jsonl" in reported, "the file after the deletion")
        assert "old.jsonl" not in reported
        task.cancel()
        await asyncio.wait({task})

    asyncio.run(run())


def test_a_stream_of_writes_is_reported_once_a_step_not_once_a_write(tmp_path: Path) -> None:
    reports: list[set[str]] = []

    async def run() -> None:
        task = asyncio.create_task(watcher.follow(tmp_path, 50, reports.append))
        await asyncio.sleep(0.2)
        await asyncio.to_thread(writes, tmp_path / "busy.jsonl")
        await asyncio.sleep(0.2)
        task.cancel()
        await asyncio.wait({task})

    def writes(path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        for _ in range(400):  # over about half a second
            os.write(fd, b"{}\n")
            time.sleep(0.001)
        os.close(fd)

    asyncio.run(run())
    assert set().union(*reports) == {"busy.jsonl"}
    assert len(reports) < 40  # ~10 steps of 50 ms, not a report per write


def test_events_lost_to_a_full_queue_report_every_file(tmp_path: Path) -> None:
    """inotify drops what its queue cannot hold (fs.inotify.max_queued_events) and says so:
    every file may have changed then."""
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 100_000:
        pytest.skip(f"filling a queue of {limit} events takes too long")
    reported: set[str] = set()
    names = {f"f{n}.jsonl" for n in range(limit + 10)}

    async def run() -> None:
        task = asyncio.create_task(watcher.follow(tmp_path, 1, reported.update))
        await asyncio.sleep(0.2)
        for name in names:  # the loop, and so the watcher, does not run meanwhile
            (tmp_path / name).touch()
        await until(lambda: names <= reported, "every file")
        task.cancel()
        await asyncio.wait({task})

    asyncio.run(run())


def test_the_watch_ending_with_its_directory_is_an_error(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()

    async def run() -> None:
        task = asyncio.create_task(watcher.follow(spool, 1, lambda _: None))
        await asyncio.sleep(0.2)
        spool.rmdir()
        with pytest.raises(OSError, match=r"the watch on .* ended"):
            await asyncio.wait_for(task, 10)

    asyncio.run(run())


@pytest.mark.parametrize("follow", WAYS)
def test_files_made_before_the_watch_began_are_reported_as_it_begins(
    tmp_path: Path, follow: Follow
) -> None:
    """A file made after the collector's scan and before its watch (a worker writing as the
    collector starts, or while its watcher restarts) is not left for the next rescan."""
    (tmp_path / "early.jsonl").write_bytes(b"{}\n")
    reported: set[str] = set()

    async def run() -> None:
        task = asyncio.create_task(follow(tmp_path, 1, reported.update))
        await until(lambda: "early.jsonl" in reported, "the file made before the watch")
        task.cancel()
        await asyncio.wait({task})

    asyncio.run(run())
