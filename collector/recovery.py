"""What the exactly-once pipeline (`collector.pipeline`) asks when something went wrong: which
record of a file the store refuses (bisected with trial commits rolled back), the offsets to
trust after a failed commit (the store's), and whether a spool file's writer may still write.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from capture_shim.spool import parse_file_name
from collector.batch import Batch, FileChunk, FileState
from collector.ports import Store
from collector.store import RecordRefused
from collector.tail import SpoolDir
from tasklog.core.errors import StoreUnavailable
from tasklog.core.process import pid_alive, runs_as


async def refused_record(store: Store, chunk: FileChunk) -> str:
    """Which record of a file's chunk Postgres refuses, found by trial transactions rolled
    back: its end, its progress, else the first line whose prefix is refused (bisected)."""

    async def refused(**parts: Any) -> bool:
        try:
            await store.commit(Batch.of([dataclasses.replace(chunk, **parts)]), trial=True)
        except RecordRefused:
            return True
        return False

    try:
        if chunk.end is not None and not await refused(end=None):
            return "its end record"
        if chunk.progress is not None and not await refused(end=None, progress=None):
            return "its progress record"
        lines = chunk.lines
        if lines and not await refused(end=None, progress=None, lines=[]):
            low, high = 0, len(lines)  # lines[:low] passes, lines[:high] is refused
            while high - low > 1:
                mid = (low + high) // 2
                if await refused(end=None, progress=None, lines=lines[:mid]):
                    high = mid
                else:
                    low = mid
            return f"its line {lines[high - 1].seq}"
        return "its start record" if chunk.start is not None else "its records"
    except StoreUnavailable:
        return "one of its records"


def reload(spool: SpoolDir, files: dict[str, FileState]) -> int:
    """After a failed commit, trust only what Postgres says was stored; returns how many files
    Postgres holds less of than this process had committed (rolled back by a failover)."""
    behind = 0
    for name, state in list(spool.files.items()):
        saved = files.get(name)
        fresh = saved or FileState(name=name, inode=state.inode)
        if state.registered and fresh.offset < state.offset:
            behind += 1
        fresh.size, fresh.changed_at = state.size, state.changed_at
        spool.files[name] = fresh
    spool.scan()
    spool.touched(set(spool.files))
    return behind


#: Seconds a dead pool child's run waits for its worker's main process to write its end (a
#: hard time limit, a revoke, a lost child: Celery's verdict) before it is LOST. Billiard notices
#: a child killed by SIGKILL some seconds after the fact.
PARENT_GRACE = 30.0


def writing(pid: int, state: FileState) -> bool:
    """Whether the process a file's name gives may still write it: alive, and running as the
    file's owner. A name is chosen by whoever wrote the file: one naming pid 1 (or any long-lived
    process of another user) would otherwise never be finalized, and stay in memory."""
    return pid_alive(pid) and (state.uid is None or runs_as(pid, state.uid))


def writer_pid(name: str) -> int | None:
    parsed = parse_file_name(name)
    return None if parsed is None else parsed.pid
