"""The collector's process: its resources, side tasks and main loop.

One collector per spool directory (`collector.lock`). `Collector.run` opens what it needs (the
lock, the metrics, two Postgres connections, Redis), migrates, loads the stored offsets and
runs the loop: scan, drain, finalize (`collector.pipeline.Pipeline`, the exactly-once state
machine), and the housekeeping (`collector.housekeeping`) when due, woken by the file watcher
(`collector.watcher`). The
watcher and the systemd watchdog are supervised side tasks (`tasklog.core.supervise`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor

from collector import metrics, watcher
from collector.housekeeping import Housekeeping
from collector.lock import spool_lock
from collector.metrics import Counters
from collector.migrate import migrate
from collector.pipeline import Pipeline
from collector.ports import until_available
from collector.publish import Publisher
from collector.settings import CollectorSettings
from collector.store import Store
from collector.tail import SpoolDir
from tasklog.core import __version__, sdnotify, supervise, trigram
from tasklog.core.errors import StoreUnavailable

log = logging.getLogger("tasklog.collector")

#: Seconds between the checks of whether kept files' commits are safe (`collector.keep`).
RELEASE_INTERVAL = 1.0


class Collector:
    def __init__(self, settings: CollectorSettings) -> None:
        self.settings = settings
        self.counters = Counters()
        self.house = Housekeeping(settings, self.counters)
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        #: A second connection: a batch is stored on it while the one before commits.
        self._spare: Store | None = None
        #: The thread that reads and parses the next batch (`Pipeline.drain`). One thread, not
        #: the default executor's several: each thread that allocates gets a malloc arena of
        #: its own, and reads spread over them held ~20 MB more at the peak of a 1 GB backlog.
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

    def _status(self, status: str) -> None:
        self.house.status = status
        if status != "ok":
            self.house.report()

    async def _main(self, store: Store, publisher: Publisher) -> None:
        url = self.settings.require_database_url()
        migrated = await until_available(
            lambda: asyncio.to_thread(migrate, url), self._stop, self._status
        )
        if migrated is None:
            return
        files = await until_available(store.load_files, self._stop, self._status)
        if files is None:
            return
        spool = SpoolDir(self.settings.spool_dir, files, self.settings.max_line_bytes)
        spool.scan()
        pipeline = Pipeline(
            store,
            publisher,
            spool,
            self.settings,
            spare=self._spare,
            counters=self.counters,
            stop=self._stop,
            status=self._status,
            reader=self._reader,
        )
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
        due["release"] = 0.0 if pipeline.keeping else float("inf")
        summary = (time.monotonic(), 0)
        try:
            while not self._stop.is_set():
                self._wake.clear()
                now = time.monotonic()
                if now >= due["scan"]:
                    await pipeline.vanished(spool.scan())
                    await pipeline.unstorable()
                    due["scan"] = now + self.settings.rescan_interval
                await pipeline.drain()
                await pipeline.forged()
                now = time.monotonic()
                if now >= due["release"]:
                    await pipeline.release()
                    due["release"] = now + RELEASE_INTERVAL
                if now >= due["orphans"]:
                    await pipeline.orphans()
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
            await self._final_drain(pipeline)
        finally:
            self.house.status = "stopping"
            sdnotify.stopping()
            self._stop.set()
            for task in (watcher, watchdog):
                task.cancel()
            await asyncio.wait({watcher, watchdog}, timeout=5)
            log.info("collector stopped (%d lines stored)", self.counters.lines)

    # -- the data path ----------------------------------------------------------------------

    async def _final_drain(self, pipeline: Pipeline) -> None:
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
            await pipeline.vanished(pipeline.spool.scan())
            # One pass leaves what a file gained while its batch was in flight (the reader
            # skips such files): pass again until a pass stores nothing.
            while True:
                before = pipeline.counters.batches
                await pipeline.drain(final=True)
                if pipeline.counters.batches == before:
                    break
            await pipeline.orphans(final=True)

        try:
            await asyncio.wait_for(drain(), timeout)
        except TimeoutError:
            files, nbytes = pipeline.spool.backlog()
            log.warning(
                "stopped after %.0fs with %d files (%d bytes) not stored; the next collector on "
                "this spool directory stores them",
                timeout,
                files,
                nbytes,
            )
        except StoreUnavailable as exc:
            log.warning("stopping without the final drain: %s", exc)

    async def _watch(self, spool: SpoolDir) -> None:
        """Wake the loop as soon as a spool file changes, until the stop.

        It may fail (inotify limits and the like): its supervisor starts it again, and the
        rescans every TASKLOG_RESCAN_INTERVAL find everything meanwhile.
        """

        def changed(names: set[str]) -> None:
            spool.touched(names)
            self._wake.set()

        await watcher.follow(spool.path, watcher.step_ms(self.settings.debounce_ms), changed)


async def serve(settings: CollectorSettings) -> None:
    # A batch makes tens of thousands of short-lived tuples and dicts: with the default
    # thresholds the cyclic collector runs every 700 of them and walks every object imported
    # at start-up again and again (~0.4 us a stored line). Start-up's objects are frozen
    # out of its reach; the hot path makes no cycles worth collecting more often than this.
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    await Collector(settings).run()
