"""The collector's main loop: watch → read a batch → commit → publish → clean up.

One collector per spool directory (a lock file says so). It stores every complete record
exactly once: offsets move only with a committed batch, and after any failed commit they are
reloaded from Postgres before reading again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from watchfiles import awatch

from capture_shim.spool import parse_file_name
from collector import metrics
from collector.batch import Batch, FileChunk, FileState, shown
from collector.housekeeping import Counters, Housekeeping
from collector.lock import spool_lock
from collector.migrate import migrate
from collector.publish import Publisher
from collector.quarantine import quarantine
from collector.settings import CollectorSettings
from collector.store import RecordRefused, Store
from collector.stored import Stored
from collector.tail import SpoolDir
from tasklog.core import __version__, sdnotify, supervise, trigram
from tasklog.core.errors import StoreUnavailable
from tasklog.core.process import pid_alive, runs_as

log = logging.getLogger("tasklog.collector")


@dataclasses.dataclass
class _InFlight:
    """A batch whose commit is under way, and the offsets rows it drops."""

    batch: Batch
    forget: list[str]
    task: asyncio.Task[Stored]


class Collector:
    def __init__(self, settings: CollectorSettings) -> None:
        self.settings = settings
        self.counters = Counters()
        self.house = Housekeeping(settings, self.counters)
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._forget: list[str] = []
        #: A second connection: a batch is stored on it while the one before commits.
        self._spare: Store | None = None
        #: The thread that reads and parses the next batch (`_drain`). One thread, not the
        #: default executor's several: each thread that allocates gets a malloc arena of its
        #: own, and reads spread over them held ~20 MB more at the peak of a 1 GB backlog.
        self._reader: ThreadPoolExecutor | None = None

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        settings = self.settings
        url = settings.require_database_url()  # the first thing a misconfigured host needs to hear
        prepare = settings.database_prepared_statements
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        with (
            spool_lock(settings.spool_dir, settings.lock_path()),
            metrics.served(self.house.metrics, settings.metrics_host, settings.metrics_port),
            ThreadPoolExecutor(1, thread_name_prefix="tasklog-read") as reader,
        ):
            self._reader = reader
            async with (
                Store(url, settings.host, settings.retention_days, prepare=prepare) as store,
                Store(url, settings.host, settings.retention_days, prepare=prepare) as spare,
                Publisher(settings.redis(), settings.redis_cluster) as publisher,
            ):
                self._spare = spare
                await self._main(store, publisher)

    async def _main(self, store: Store, publisher: Publisher) -> None:
        url = self.settings.require_database_url()
        if await self._until_available(lambda: asyncio.to_thread(migrate, url)) is None:
            return
        files = await self._until_available(store.load_files)
        if files is None:
            return
        spool = SpoolDir(self.settings.spool_dir, files, self.settings.max_line_bytes)
        spool.scan()
        log.info(
            "collector %s following %s as host %r (%d files known)",
            __version__,
            self.settings.spool_dir,
            self.settings.host,
            len(files),
        )
        self.house.status = "ok"
        sdnotify.ready()
        # Side tasks, restarted when they fail (`tasklog.core.supervise`); the rescans below
        # find every change meanwhile, so a watcher that is down only slows things.
        watcher = asyncio.create_task(
            supervise.restarting(
                f"watching {spool.path}",
                lambda: self._watch(spool),
                max_delay=max(5.0, self.settings.rescan_interval),
                logger=log,
            ),
            name="watch",
        )
        watchdog = asyncio.create_task(
            supervise.restarting(
                "the systemd watchdog", lambda: sdnotify.watchdog_loop(self._stop), logger=log
            ),
            name="watchdog",
        )
        for task in (watcher, watchdog):
            task.add_done_callback(supervise.stop_on_exit)
        due = {"scan": 0.0, "orphans": 0.0, "heartbeat": 0.0, "summary": 0.0, "prune": 0.0}
        due["index"] = 0.0
        summary = (time.monotonic(), 0)
        try:
            while not self._stop.is_set():
                self._wake.clear()
                now = time.monotonic()
                if now >= due["scan"]:
                    await self._vanished(store, publisher, spool, spool.scan())
                    await self._unstorable(spool)
                    due["scan"] = now + self.settings.rescan_interval
                await self._drain(store, publisher, spool)
                await self._forged(store, publisher, spool)
                now = time.monotonic()
                if now >= due["orphans"]:
                    await self._orphans(store, publisher, spool)
                    due["orphans"] = now + min(5.0, self.settings.orphan_timeout / 2)
                if now >= due["heartbeat"]:
                    await self.house.heartbeat(store, spool)
                    due["heartbeat"] = now + self.settings.heartbeat_interval
                if now >= due["prune"]:
                    await self.house.prune(store)
                    due["prune"] = now + self.settings.prune_interval
                if now >= due["index"]:
                    # Right after each slice of the open day ends (tasklog.core.trigram).
                    self.house.index_in_background()
                    step = trigram.SLICE.total_seconds()
                    due["index"] = now + step - time.time() % step + 2.0
                if now >= due["summary"]:
                    summary = self.house.summary(spool, summary)
                    due["summary"] = now + self.settings.summary_interval
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(0.01, min(due.values()) - now))
            await self._final_drain(store, publisher, spool)
        finally:
            self.house.status = "stopping"
            sdnotify.stopping()
            self._stop.set()
            for task in (watcher, watchdog):
                task.cancel()
            await asyncio.wait({watcher, watchdog}, timeout=5)
            log.info("collector stopped (%d lines stored)", self.counters.lines)

    # -- the data path ----------------------------------------------------------------------

    async def _watch(self, spool: SpoolDir) -> None:
        """Wake the loop as soon as a spool file changes, until the stop.

        It may fail (inotify limits and the like): its supervisor starts it again, and the
        rescans every TASKLOG_RESCAN_INTERVAL find everything meanwhile.
        """
        # watchfiles yields once no change came for one `step` (or after `debounce` of steady
        # changes): the step is the delay a lone print waits here (10 ms made 17 of the 19 ms
        # from print to browser, docs/BENCHMARKS.md).
        step = max(1, min(10, self.settings.debounce_ms // 10))
        async for changes in awatch(
            spool.path,
            stop_event=self._stop,
            debounce=self.settings.debounce_ms,
            step=step,
            recursive=False,
            rust_timeout=1000,
            yield_on_timeout=False,
        ):
            spool.touched({Path(path).name for _, path in changes})
            self._wake.set()

    async def _final_drain(self, store: Store, publisher: Publisher, spool: SpoolDir) -> None:
        """On stop, store what the spool still holds, for TASKLOG_STOP_DRAIN_TIMEOUT at most.

        A sidecar's spool (a Kubernetes emptyDir) goes with its pod: what is not stored now is
        lost. A task whose writer is gone is finalized now rather than after the idle timeout.
        Cut short, nothing is stored twice: offsets advance only with a commit.
        """
        timeout = self.settings.stop_drain_timeout
        if timeout <= 0:
            return
        log.info("stopping: storing what the spool holds (at most %.0fs)", timeout)

        async def drain() -> None:
            await self._vanished(store, publisher, spool, spool.scan())
            # One pass leaves what a file gained while its batch was in flight (the reader
            # skips such files): pass again until a pass stores nothing.
            while True:
                before = self.counters.batches
                await self._drain(store, publisher, spool, final=True)
                if self.counters.batches == before:
                    break
            await self._orphans(store, publisher, spool, final=True)

        try:
            await asyncio.wait_for(drain(), timeout)
        except TimeoutError:
            files, nbytes = spool.backlog()
            log.warning(
                "stopped after %.0fs with %d files (%d bytes) not stored; the next collector on "
                "this spool directory stores them",
                timeout,
                files,
                nbytes,
            )
        except StoreUnavailable as exc:
            log.warning("stopping without the final drain: %s", exc)

    async def _drain(
        self, store: Store, publisher: Publisher, spool: SpoolDir, *, final: bool = False
    ) -> None:
        """Store everything readable now, batch by batch (`final`: also while stopping).

        Two batches are in flight at once, on two connections: while one commits (its
        write-ahead log flushed to disk, which one COPY of everything would wait for once),
        the next is already copied on the other connection, and the one after is read and
        parsed in a thread meanwhile, from other files than those two (their offsets are
        about to move). A batch commits only after the one before it did (`Store.commit`'s
        `after`), so results are applied in order, and it rolls back if that one failed: it
        is then read again, nothing stored twice.
        """
        limits = (self.settings.batch_lines, self.settings.batch_bytes)
        connections = (store, self._spare or store)
        turn = 0
        batch = spool.read_batch(*limits)
        behind: _InFlight | None = None
        current: _InFlight | None = None  # started, and not yet `behind`
        reading: asyncio.Future[Batch] | None = None  # the next batch, read in a thread
        try:
            while final or not self._stop.is_set():
                if not batch and behind is not None:
                    # What is left may all be in the files of the batch in flight, which the
                    # read skipped: wait for it (or its failure's handling), then read again.
                    await self._settle(store, publisher, spool, behind, None)
                    behind = None
                    batch = spool.read_batch(*limits)
                if not batch and not self._forget:
                    break
                forget, self._forget = self._forget, []
                after = behind.task if behind is not None else None
                if connections[1] is store and behind is not None:
                    # One connection only: never two transactions on it at once.
                    ok = await self._settle(store, publisher, spool, behind, None)
                    behind, after = None, None
                    if not ok:
                        self._forget = forget + self._forget
                        batch = spool.read_batch(*limits)
                        continue
                commit = connections[turn].commit(batch, forget, after=after)
                turn ^= 1
                current = _InFlight(batch, forget, asyncio.create_task(commit, name="commit"))
                if batch:
                    in_flight = {chunk.state.name for chunk in batch.chunks}
                    if behind is not None:
                        in_flight.update(chunk.state.name for chunk in behind.batch.chunks)
                    reading = asyncio.get_running_loop().run_in_executor(
                        self._reader, spool.read_batch, *limits, in_flight
                    )
                if behind is not None and not await self._settle(
                    store, publisher, spool, behind, current, reading
                ):
                    behind = current = reading = None
                    spool.touched(set(spool.files))  # what the read ahead took is read again
                    batch = spool.read_batch(*limits)
                    continue
                behind, current = current, None
                if reading is None:
                    break
                batch = await reading
                reading = None
        finally:
            # Interrupted or done: the reader is done with the spool's bookkeeping, and what is
            # in flight commits or fails, before anything else uses them or the connections.
            if reading is not None:
                await asyncio.wait({reading})
            if behind is not None and await self._settle(store, publisher, spool, behind, current):
                behind = None
            if current is not None and behind is None:
                await self._settle(store, publisher, spool, current, None)

    async def _settle(
        self,
        store: Store,
        publisher: Publisher,
        spool: SpoolDir,
        done: _InFlight,
        following: _InFlight | None,
        reading: asyncio.Future[Batch] | None = None,
    ) -> bool:
        """Wait for a batch's commit and apply it; False if it failed (handled as `_store`
        handles a failure). `following`, the batch committing after it, then rolls back: it
        is waited for and its files are read again; so is `reading`, the batch being read
        meanwhile, which is thrown away (the failure's handling changes what is stored)."""
        try:
            stored = await done.task
        except Exception as exc:
            if following is not None:
                with contextlib.suppress(Exception):
                    await following.task
                self._forget = following.forget + self._forget
            if reading is not None:
                await asyncio.wait({reading})
            await self._failed(store, publisher, spool, done.batch, done.forget, exc)
            return False
        await self._stored(publisher, spool, done.batch, stored)
        return True

    async def _store(
        self, store: Store, publisher: Publisher, spool: SpoolDir, batch: Batch
    ) -> bool:
        """Commit a batch and apply its result; False when Postgres failed (the offsets were
        reloaded from it). A record Postgres refuses costs its file alone (`_isolate`)."""
        forget, self._forget = self._forget, []
        try:
            stored = await store.commit(batch, forget)
        except Exception as exc:
            return await self._failed(store, publisher, spool, batch, forget, exc)
        await self._stored(publisher, spool, batch, stored)
        return True

    async def _failed(
        self,
        store: Store,
        publisher: Publisher,
        spool: SpoolDir,
        batch: Batch,
        forget: list[str],
        exc: Exception,
    ) -> bool:
        """A batch's commit failed: isolate a refused record, or wait for Postgres and
        reload the offsets from it. True when the batch was stored after all (in parts)."""
        self._forget = forget + self._forget
        if isinstance(exc, RecordRefused):
            return await self._isolate(store, publisher, spool, batch.chunks, exc)
        self.counters.store_failures += 1
        if not isinstance(exc, StoreUnavailable):
            log.error("storing a batch failed; retrying it", exc_info=exc)
        files = await self._until_available(store.load_files, first_error=exc)
        if files is not None:
            _reload(spool, files)
            if self._spare is not None:
                # Nothing runs on it now (a failed batch waits for the one after it), and
                # its connection most likely went with the outage: open a fresh one on next
                # use rather than meet a second failure, and a second warning, for the same.
                await self._spare.close()
        return False

    async def _stored(
        self, publisher: Publisher, spool: SpoolDir, batch: Batch, stored: Stored
    ) -> None:
        """A batch committed: move its files' offsets, publish, delete the finished files."""
        ended = spool.commit(batch, stored)
        for state in stored.refused:
            spool.forged[state.name] = "it claims a task that already succeeded or failed"
        self.counters.batches += 1
        self.counters.lines += stored.rows
        self.counters.corrupt += batch.corrupt
        self.counters.times_clamped += stored.clamped
        log.debug(
            "batch: %d lines from %d files stored in one transaction",
            stored.rows,
            len(batch.chunks),
        )
        await publisher.publish(stored.lines, stored.tasks)
        for state in ended:
            self._remove(spool, state)

    async def _isolate(
        self,
        store: Store,
        publisher: Publisher,
        spool: SpoolDir,
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
            record = await _refused_record(store, chunks[0])
            await self._quarantine(
                store, publisher, spool, chunks[0].state, f"{refusal.why} in {record}"
            )
            return True
        half = len(chunks) // 2
        for part in (chunks[:half], chunks[half:]):
            if not await self._store(store, publisher, spool, Batch.of(part)):
                return False
        return True

    async def _quarantine(
        self, store: Store, publisher: Publisher, spool: SpoolDir, state: FileState, why: str
    ) -> None:
        """Move a spool file Postgres cannot take into the quarantine directory, with one
        warning naming it; its task, if stored, becomes LOST with the lines stored so far."""
        where = quarantine(spool.path, state.name, self.settings.quarantine_path())
        spool.drop(state)
        self.counters.quarantined += 1
        task = None
        if state.registered:
            reason = f"its spool file was quarantined ({why})"
            try:
                task = await store.lose(state, reason)
            except (StoreUnavailable, RecordRefused):
                pass  # the task stays as stored; the file is out of the way all the same
            self._forget.append(state.name)
        log.warning(
            "spool file %s quarantined, %s: %s%s; the other files go on",
            shown(state.name),
            where,
            why,
            f"; task {shown(state.task_id or '')} is LOST" if task else "",
        )
        if task:
            await publisher.publish({}, [task])

    async def _unstorable(self, spool: SpoolDir) -> None:
        """Files whose name Postgres cannot store (not UTF-8): moved aside unread."""
        while spool.unstorable:
            name = spool.unstorable.pop()
            where = quarantine(spool.path, name, self.settings.quarantine_path())
            spool.ignore(name)
            self.counters.quarantined += 1
            log.warning(
                "spool file %s quarantined, %s: its name is not UTF-8",
                shown(name),
                where,
            )

    async def _forged(self, store: Store, publisher: Publisher, spool: SpoolDir) -> None:
        """Files that claim a task they may not speak for (another task's id than their
        name's, or a new run of a task that already succeeded or failed under that same
        delivery): moved aside, the task they claim left as it is."""
        while spool.forged:
            name, why = spool.forged.popitem()
            state = spool.files.get(name)
            if state is None:
                continue
            if state.registered:
                # Its own task's run, stored before: the run is finalized as LOST.
                await self._quarantine(store, publisher, spool, state, why)
                continue
            where = quarantine(spool.path, name, self.settings.quarantine_path())
            spool.drop(state)
            self.counters.quarantined += 1
            log.warning("spool file %s quarantined, %s: %s", shown(name), where, why)

    def _remove(self, spool: SpoolDir, state: FileState) -> None:
        """A file whose end is stored is deleted; its offsets row goes with the next batch."""
        try:
            os.unlink(spool.path / state.name)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot delete stored spool file %s: %s", shown(state.name), exc)
            return
        spool.files.pop(state.name, None)
        self._forget.append(state.name)
        self.counters.files_done += 1

    async def _vanished(
        self, store: Store, publisher: Publisher, spool: SpoolDir, names: list[str]
    ) -> None:
        """Files deleted under us: what was stored stays; an unfinished task becomes LOST."""
        for name in names:
            state = spool.files[name]
            if not state.ended:
                self.counters.vanished += 1
                log.warning(
                    "spool file %s disappeared before its end was stored (task %s)",
                    shown(name),
                    shown(state.task_id or "?"),
                )
                if state.registered:
                    try:
                        task = await store.lose(state, "its spool file was deleted before the end")
                    except StoreUnavailable:
                        return  # the next scan tries again
                    spool.lost(state)
                    await publisher.publish({}, [task] if task else [])
            del spool.files[name]
            if state.registered:
                self._forget.append(name)

    async def _orphans(
        self, store: Store, publisher: Publisher, spool: SpoolDir, *, final: bool = False
    ) -> None:
        """Finalize files whose writer died: idle past TASKLOG_ORPHAN_TIMEOUT (at once if
        `final`: while stopping, a dead writer will not come back before the spool goes)."""
        now = time.monotonic()
        for state in list(spool.files.values()):
            if state.ended and state.size <= state.offset:
                # Stored in full, but the process died before deleting it (kill -9 after commit).
                self._remove(spool, state)
                continue
            if state.ended or state.size > state.offset:
                continue
            if not final and now - state.changed_at < self.settings.orphan_timeout:
                continue
            pid = writer_pid(state.name)
            if pid is not None and _writing(pid, state):
                continue
            if (
                not final
                and state.parent_pid is not None
                and now - state.changed_at < PARENT_GRACE
                and pid_alive(state.parent_pid)
            ):
                continue  # a pool child's worker may still write its end (capture_shim.verdict)
            if not state.registered:
                self._remove(spool, state)  # the writer died before its start record
                continue
            reason = f"worker process {pid} died without finishing the task"
            try:
                task = await store.lose(state, reason)
            except StoreUnavailable:
                return
            spool.lost(state)
            self.counters.lost += 1
            log.warning("task %s is LOST: %s", shown(state.task_id or "?"), reason)
            await publisher.publish({}, [task] if task else [])
            self._remove(spool, state)

    async def _until_available(self, fn: Any, first_error: BaseException | None = None) -> Any:
        """Call `fn` until Postgres answers, backing off; None if asked to stop meanwhile."""
        delay = 0.2
        error = first_error
        warned = False
        while not self._stop.is_set():
            if error is None:
                try:
                    result = await fn()
                except StoreUnavailable as exc:
                    error = exc
                else:
                    if warned:
                        log.info("Postgres reachable again; resuming from stored offsets")
                    self.house.status = "ok"
                    return result
            if not warned:
                log.warning("Postgres unavailable (%s); retrying with backoff", error)
                warned = True
            self.house.status = "waiting for postgres"
            self.house.report()
            error = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            delay = min(delay * 2, 10.0)
        return None


async def _refused_record(store: Store, chunk: FileChunk) -> str:
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


def _reload(spool: SpoolDir, files: dict[str, FileState]) -> None:
    """After a failed commit, trust only what Postgres says was stored."""
    for name, state in list(spool.files.items()):
        saved = files.get(name)
        fresh = saved or FileState(name=name, inode=state.inode)
        fresh.size, fresh.changed_at = state.size, state.changed_at
        spool.files[name] = fresh
    spool.scan()
    spool.touched(set(spool.files))


#: Seconds a dead pool child's run waits for its worker's main process to write its end (a
#: hard time limit, a revoke, a lost child: Celery's verdict) before it is LOST. Billiard notices
#: a child killed by SIGKILL some seconds after the fact.
PARENT_GRACE = 30.0


def _writing(pid: int, state: FileState) -> bool:
    """Whether the process a file's name gives may still write it: alive, and running as the
    file's owner. A name is chosen by whoever wrote the file: one naming pid 1 (or any long-lived
    process of another user) would otherwise never be finalized, and stay in memory."""
    return pid_alive(pid) and (state.uid is None or runs_as(pid, state.uid))


def writer_pid(name: str) -> int | None:
    parsed = parse_file_name(name)
    return None if parsed is None else parsed.pid


async def serve(settings: CollectorSettings) -> None:
    # A batch makes tens of thousands of short-lived tuples and dicts: with the default
    # thresholds the cyclic collector runs every 700 of them and walks every object imported
    # at start-up again and again (~0.4 us a stored line). Start-up's objects are frozen
    # out of its reach; the hot path makes no cycles worth collecting more often than this.
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    await Collector(settings).run()
