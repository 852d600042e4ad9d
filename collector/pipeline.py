"""The exactly-once pipeline: read a batch → commit it → apply it → publish → clean up.

`Pipeline` owns the state machine that keeps the collector's promise, every complete record
stored exactly once: the store and its spare connection, the publisher, the spool's
bookkeeping and the files whose offsets rows are to be forgotten. Offsets move only with a
committed batch (`SpoolDir.commit`); after a failed commit they are reloaded from the store
before anything is read again. Two batches are in flight at once (`drain`), the second
committing only after the first; a record the store refuses costs its file alone, found by
bisection (`_isolate`); files deleted under it and writers that died finalize their task.
A finished file is deleted once its end is stored, or kept until its commit is safe from a
failover to an asynchronous standby (`collector.keep`, TASKLOG_FAILOVER_GRACE: `release`); a
store whose connection was lost is asked for its offsets again before the next commit (it may
be a promoted standby that lacks some), and what it lacks is read again.

It talks to a `Store` and a `Publisher` protocol (`collector.ports`): `collector.store.Store`
(Postgres) and `collector.publish.Publisher` (Redis) in the collector, an in-memory store in
the unit tests (`tests/unit/test_pipeline_machine.py`), which drive it through the orders of
events that matter. `collector.daemon.Collector` runs it: when to scan, drain, finalize, stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from collector import recovery
from collector.batch import Batch, FileChunk, FileState, shown
from collector.cadence import Forgotten, Gathering
from collector.keep import KeptFiles
from collector.metrics import Counters
from collector.ports import After, Publisher, Store, until_available
from collector.quarantine import quarantine
from collector.settings import CollectorSettings
from collector.store import RecordRefused
from collector.stored import Stored
from collector.tail import SpoolDir
from tasklog.core.errors import StoreUnavailable
from tasklog.core.process import pid_alive

log = logging.getLogger("tasklog.collector")

T = TypeVar("T")


@dataclasses.dataclass
class _InFlight:
    """A batch whose commit is under way, and the offsets rows it drops."""

    batch: Batch
    forget: list[str]
    task: asyncio.Task[Stored]
    #: Set once its transaction is placed (`collector.ports.After`).
    placed: asyncio.Event
    #: Its commit's result applied (`Pipeline._apply`): its files' offsets moved past it, so
    #: a read need not leave them out any more.
    applied: bool = False


class Pipeline:
    """The exactly-once state machine (see the module)."""

    def __init__(
        self,
        store: Store,
        publisher: Publisher,
        spool: SpoolDir,
        settings: CollectorSettings,
        *,
        spare: Store | None = None,
        counters: Counters | None = None,
        stop: asyncio.Event | None = None,
        status: Callable[[str], None] | None = None,
        reader: Executor | None = None,
    ) -> None:
        self.store = store
        #: A second connection: a batch is stored on it while the one before commits.
        self.spare = spare
        self.publisher = publisher
        self.spool = spool
        self.settings = settings
        self.counters = counters if counters is not None else Counters()
        self._stop = stop if stop is not None else asyncio.Event()
        self._status = status if status is not None else (lambda _: None)
        #: The thread that reads and parses the next batch (`drain`); None: the loop's default.
        self._reader = reader
        #: Spool files whose offsets rows go with the next commit (deleted, finalized).
        self._forget = Forgotten()
        #: The least time between the reads of two batches while files keep changing.
        self._gathering = Gathering(settings.debounce_ms / 1000)
        #: Finished files kept for a failover (TASKLOG_FAILOVER_GRACE, `collector.keep`).
        self._kept = KeptFiles(settings.failover_grace)
        #: `store.losses` when the offsets were last loaded: one more, and the next connection
        #: may lead to another server (a promoted standby).
        self._losses = store.losses

    async def drain(self, *, final: bool = False) -> None:
        """Store everything readable now, batch by batch (`final`: also while stopping).

        Two batches are in flight at once, on two connections: while one commits (its
        write-ahead log flushed to disk, which one COPY of everything would wait for once),
        the next is already copied on the other connection, and the one after is read and
        parsed in a thread meanwhile, from other files than those of the two not yet applied
        when it is read (their offsets are about to move). A batch begins once the one before
        it is placed (its tasks' rows locked), and commits only after that one did
        (`Store.commit`'s `after`, `After`): they never wait on each other in a circle,
        results are applied in order, and a batch rolls back if the one before failed: it is
        then read again, nothing stored twice.
        """
        if self.store.losses != self._losses:
            await self._resync()
        limits = (self.settings.batch_lines, self.settings.batch_bytes)
        connections = (self.store, self.spare or self.store)
        turn = 0
        await self._gathering.wait(final)
        began = time.monotonic()
        batch = self.spool.read_batch(*limits)
        self._gathering.read(began, batch.chunks)
        behind: _InFlight | None = None
        current: _InFlight | None = None  # started, and not yet `behind`
        reading: asyncio.Future[Batch] | None = None  # the next batch, read in a thread
        try:
            while final or not self._stop.is_set():
                if not batch and behind is not None:
                    # What is left may all be in the files of the batch in flight, which the
                    # read skipped: wait for it (or its failure's handling), then read again.
                    await self._settle(behind, None)
                    behind = None
                    batch = self.spool.read_batch(*limits)
                if not batch and not self._forget.due(final):
                    break
                forget = self._forget.take()
                after = After(behind.placed, behind.task) if behind is not None else None
                if connections[1] is self.store and behind is not None:
                    # One connection only: never two transactions on it at once.
                    ok = await self._settle(behind, None)
                    behind, after = None, None
                    if not ok:
                        self._forget.give_back(forget)
                        batch = self._read_again(limits)
                        continue
                placed = asyncio.Event()
                commit = connections[turn].commit(batch, forget, after=after, placed=placed)
                turn ^= 1
                current = _InFlight(
                    batch, forget, asyncio.create_task(commit, name="commit"), placed
                )
                if batch:
                    flights = [current] if behind is None else [behind, current]
                    reading = asyncio.ensure_future(self._read_ahead(limits, flights, final))
                if behind is not None and not await self._settle(behind, current, reading):
                    behind = current = reading = None
                    batch = self._read_again(limits)
                    continue
                behind, current = current, None
                if reading is None:
                    break
                # The next read may first wait out its gathering time: a batch committed
                # meanwhile is applied and published now, not after it (print → browser).
                either: list[asyncio.Future[Any]] = [reading, behind.task]
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                settled = behind.task.done()
                if settled:
                    ok = await self._settle(behind, None, reading)
                    behind = None
                    if not ok:
                        reading = None  # waited for, and dropped
                        batch = self._read_again(limits)
                        continue
                batch = await reading
                reading = None
                if not batch and settled:
                    # What is left may all be in the files of the batch settled meanwhile,
                    # which the read skipped.
                    batch = self.spool.read_batch(*limits)
        finally:
            # Interrupted or done: the reader is done with the spool's bookkeeping, and what is
            # in flight commits or fails, before anything else uses them or the connections.
            if reading is not None:
                await asyncio.wait({reading})
            if behind is not None and await self._settle(behind, current):
                behind = None
            if current is not None and behind is None:
                await self._settle(current, None)

    def _read_again(self, limits: tuple[int, int]) -> Batch:
        """After a failed commit: the batch read meanwhile is dropped, and every file is read
        again from the offsets (reloaded from the store)."""
        self.spool.touched(set(self.spool.files))
        return self.spool.read_batch(*limits)

    async def _read_ahead(
        self, limits: tuple[int, int], flights: list[_InFlight], final: bool
    ) -> Batch:
        """The next batch, read in the reader thread once its gathering time passed (not
        while stopping: `final`), leaving out the files of those `flights` not yet applied
        when it is read (a batch applied while the read waited no longer holds its files
        back: under a steady stream, two files written at once were read in turns)."""
        await self._gathering.wait(final)
        skip = {chunk.state.name for f in flights if not f.applied for chunk in f.batch.chunks}
        began = time.monotonic()
        batch = await asyncio.get_running_loop().run_in_executor(
            self._reader, self.spool.read_batch, *limits, skip
        )
        self._gathering.read(began, batch.chunks)
        return batch

    async def _settle(
        self,
        done: _InFlight,
        following: _InFlight | None,
        reading: asyncio.Future[Batch] | None = None,
    ) -> bool:
        """Wait for a batch's commit and apply it; False if it failed (handled as `_commit_alone`
        handles a failure). `following`, the batch committing after it, then rolls back: it
        is waited for and its files are read again; so is `reading`, the batch being read
        meanwhile, which is thrown away (the failure's handling changes what is stored)."""
        try:
            stored = await done.task
        except Exception as exc:
            if following is not None:
                with contextlib.suppress(Exception):
                    await following.task
                self._forget.give_back(following.forget)
            if reading is not None:
                await asyncio.wait({reading})
            await self._failed(done.batch, done.forget, exc)
            return False
        await self._apply(done.batch, stored)
        done.applied = True
        return True

    async def _commit_alone(self, batch: Batch) -> bool:
        """Commit a batch and apply its result; False when Postgres failed (the offsets were
        reloaded from it). A record Postgres refuses costs its file alone (`_isolate`)."""
        forget = self._forget.take()
        try:
            stored = await self.store.commit(batch, forget)
        except Exception as exc:
            return await self._failed(batch, forget, exc)
        await self._apply(batch, stored)
        return True

    async def _failed(
        self,
        batch: Batch,
        forget: list[str],
        exc: Exception,
    ) -> bool:
        """A batch's commit failed: isolate a refused record, or wait for Postgres and
        reload the offsets from it. True when the batch was stored after all (in parts)."""
        self._forget.give_back(forget)
        if isinstance(exc, RecordRefused):
            return await self._isolate(batch.chunks, exc)
        self.counters.store_failures += 1
        if not isinstance(exc, StoreUnavailable):
            log.error("storing a batch failed; retrying it", exc_info=exc)
        files = await self.until_available(self.store.load_files, first_error=exc)
        if files is not None:
            self._reloaded(files)
            if self.spare is not None:
                # Nothing runs on it now (a failed batch waits for the one after it), and
                # its connection most likely went with the outage: open a fresh one on next
                # use rather than meet a second failure, and a second warning, for the same.
                await self.spare.close()
        return False

    async def _apply(self, batch: Batch, stored: Stored) -> None:
        """A batch committed: move its files' offsets, publish, delete the finished files."""
        ended = self.spool.commit(batch, stored)
        for state in stored.refused:
            self.spool.forged[state.name] = "it claims a task that already succeeded or failed"
        self.counters.batches += 1
        self.counters.lines += stored.rows
        self.counters.corrupt += batch.corrupt
        self.counters.times_clamped += stored.clamped
        log.debug(
            "batch: %d lines from %d files stored in one transaction",
            stored.rows,
            len(batch.chunks),
        )
        await self.publisher.publish(stored.lines, stored.tasks)
        for state in ended:
            self._remove(state)

    async def _isolate(
        self,
        chunks: list[FileChunk],
        refusal: RecordRefused,
    ) -> bool:
        """Postgres refused something in these files' records: commit halves until the file
        holding it is found (each half is a whole transaction, exactly once as any batch),
        then move that file aside. The other files go on as if nothing happened."""
        if not chunks:  # only forgotten files' rows: never refused, but never retried forever
            log.error("Postgres refused dropping offsets rows (%s); kept", refusal.why)
            self._forget.clear()
            return True
        if len(chunks) == 1:
            record = await recovery.refused_record(self.store, chunks[0])
            await self._quarantine(chunks[0].state, f"{refusal.why} in {record}")
            return True
        half = len(chunks) // 2
        for part in (chunks[:half], chunks[half:]):
            if not await self._commit_alone(Batch.of(part)):
                return False
        return True

    async def _quarantine(self, state: FileState, why: str) -> None:
        """Move a spool file Postgres cannot take into the quarantine directory, with one
        warning naming it; its task, if stored, becomes LOST with the lines stored so far."""
        where = quarantine(self.spool.path, state.name, self.settings.quarantine_path())
        self.spool.drop(state)
        self.counters.quarantined += 1
        task = None
        if state.registered:
            reason = f"its spool file was quarantined ({why})"
            try:
                task = await self.store.lose(state, reason)
            except (StoreUnavailable, RecordRefused):
                pass  # the task stays as stored; the file is out of the way all the same
            self._forget.add(state.name)
        log.warning(
            "spool file %s quarantined, %s: %s%s; the other files go on",
            shown(state.name),
            where,
            why,
            f"; task {shown(state.task_id or '')} is LOST" if task else "",
        )
        if task:
            await self.publisher.publish({}, [task])

    async def unstorable(self) -> None:
        """Files whose name Postgres cannot store (not UTF-8): moved aside unread."""
        while self.spool.unstorable:
            name = self.spool.unstorable.pop()
            where = quarantine(self.spool.path, name, self.settings.quarantine_path())
            self.spool.ignore(name)
            self.counters.quarantined += 1
            log.warning(
                "spool file %s quarantined, %s: its name is not UTF-8",
                shown(name),
                where,
            )

    async def forged(self) -> None:
        """Files that claim a task they may not speak for (another task's id than their
        name's, or a new run of a task that already succeeded or failed under that same
        delivery): moved aside, the task they claim left as it is."""
        while self.spool.forged:
            name, why = self.spool.forged.popitem()
            state = self.spool.files.get(name)
            if state is None:
                continue
            if state.registered:
                # Its own task's run, stored before: the run is finalized as LOST.
                await self._quarantine(state, why)
                continue
            where = quarantine(self.spool.path, name, self.settings.quarantine_path())
            self.spool.drop(state)
            self.counters.quarantined += 1
            log.warning("spool file %s quarantined, %s: %s", shown(name), where, why)

    def _remove(self, state: FileState) -> None:
        """A file whose end is stored goes, or is kept for a failover (TASKLOG_FAILOVER_GRACE)
        until its commit is safe (`release`)."""
        if self._kept.enabled and state.registered:
            self._kept.keep(state.name, time.monotonic())
        else:
            self._delete(state.name)

    def _delete(self, name: str) -> None:
        """Delete a stored file; its offsets row goes with the next batch."""
        try:
            os.unlink(self.spool.path / name)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot delete stored spool file %s: %s", shown(name), exc)
            return
        self.spool.files.pop(name, None)
        self._forget.add(name)
        self.counters.files_done += 1

    @property
    def keeping(self) -> bool:
        """Whether finished files are kept for a failover (`release` has work to do)."""
        return self._kept.enabled

    async def release(self) -> None:
        """Delete the kept files whose commit every standby confirmed, or whose grace period
        is over. The store gone meanwhile: its offsets are reloaded once it answers again, as
        after a failed commit (a failover may have rolled commits back)."""
        if not len(self._kept):
            return
        try:
            written, confirmed = await self.store.replication_position()
        except StoreUnavailable as exc:
            await self._failed(Batch(), [], exc)
            return
        if self.store.losses != self._losses:
            return  # the connection was lost meanwhile: resync first (`drain`)
        for name in self._kept.release(written, confirmed, time.monotonic()):
            state = self.spool.files.get(name)
            if state is not None and state.ended and state.size <= state.offset:
                self._delete(name)

    async def _resync(self) -> None:
        """The store's connection was lost (a heartbeat, a prune failed): the next one may
        reach a promoted standby; trust only the offsets the store holds then."""
        files = await self.until_available(self.store.load_files)
        if files is not None:
            self._reloaded(files)

    def _reloaded(self, files: dict[str, FileState]) -> None:
        """Apply the offsets read from the store. Kept files start over: those stored in full
        are kept again (`orphans`), the others are read again from where the store says."""
        behind = recovery.reload(self.spool, files)
        if behind:
            log.warning(
                "Postgres holds less than this collector committed of %d spool files "
                "(a failover to a standby that missed commits?): re-reading them from the "
                "stored offsets",
                behind,
            )
        self._kept.clear()
        self._losses = self.store.losses

    async def vanished(self, names: list[str]) -> None:
        """Files deleted under us: what was stored stays; an unfinished task becomes LOST."""
        for name in names:
            state = self.spool.files[name]
            if not state.ended:
                self.counters.vanished += 1
                log.warning(
                    "spool file %s disappeared before its end was stored (task %s)",
                    shown(name),
                    shown(state.task_id or "?"),
                )
                if state.registered:
                    try:
                        task = await self.store.lose(
                            state, "its spool file was deleted before the end"
                        )
                    except StoreUnavailable:
                        return  # the next scan tries again
                    self.spool.lost(state)
                    await self.publisher.publish({}, [task] if task else [])
            del self.spool.files[name]
            self._kept.discard(name)
            if state.registered:
                self._forget.add(name)

    async def orphans(self, *, final: bool = False) -> None:
        """Finalize files whose writer died: idle past TASKLOG_ORPHAN_TIMEOUT (at once if
        `final`: while stopping, a dead writer will not come back before the spool goes)."""
        now = time.monotonic()
        for state in list(self.spool.files.values()):
            if state.ended and state.size <= state.offset:
                # Stored in full, but the process died before deleting it (kill -9 after commit),
                # or kept for a failover (kept again after a reload or a restart).
                if state.name not in self._kept:
                    self._remove(state)
                continue
            if state.ended or state.size > state.offset:
                continue
            if not final and now - state.changed_at < self.settings.orphan_timeout:
                continue
            pid = recovery.writer_pid(state.name)
            if pid is not None and recovery.writing(pid, state):
                continue
            if (
                not final
                and state.parent_pid is not None
                and now - state.changed_at < recovery.PARENT_GRACE
                and pid_alive(state.parent_pid)
            ):
                continue  # a pool child's worker may still write its end (capture_shim.verdict)
            if not state.registered:
                self._remove(state)  # the writer died before its start record
                continue
            reason = f"worker process {pid} died without finishing the task"
            try:
                task = await self.store.lose(state, reason)
            except StoreUnavailable:
                return
            self.spool.lost(state)
            self.counters.lost += 1
            log.warning("task %s is LOST: %s", shown(state.task_id or "?"), reason)
            await self.publisher.publish({}, [task] if task else [])
            self._remove(state)

    async def until_available(
        self, fn: Callable[[], Awaitable[T]], first_error: BaseException | None = None
    ) -> T | None:
        """`until_available` with this pipeline's stop and status."""
        return await until_available(fn, self._stop, self._status, first_error)
