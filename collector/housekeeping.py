"""The collector's housekeeping, beside its data path: what it tells the world and what it tidies.

The heartbeat row (`collector_heartbeats`: backlog, counters, spool space), systemd's status
line and the metrics (file and port), the warning when the spool's file system fills up,
retention and the search indexes (`collector.retention`, `collector.searchindex`, the latter
in a thread of its own), and the periodic summary line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from datetime import UTC, datetime

from collector import metrics, searchindex
from collector.metrics import Counters
from collector.settings import CollectorSettings
from collector.store import Store
from collector.tail import SpoolDir
from tasklog.core import __version__, sdnotify
from tasklog.core.errors import StoreUnavailable

log = logging.getLogger("tasklog.collector")

#: Below this much free space the spool counts as full (a record or two would not fit).
SPOOL_LOW_BYTES = 64 << 10


class Housekeeping:
    """Heartbeats, status, metrics, retention, search indexes and the summary line."""

    def __init__(self, settings: CollectorSettings, counters: Counters) -> None:
        self.settings = settings
        self.counters = counters
        #: What the collector is doing ("starting", "ok", "waiting for postgres", "stopping").
        self.status = "starting"
        self._started_at = datetime.now(UTC)
        self._backlog = (0, 0)
        self._spool_full = False
        self._indexer: threading.Thread | None = None
        self._spool_space: tuple[int | None, int | None] = (None, None)
        self._snapshot = metrics.Snapshot(counters=self.counters.as_dict(), status=self.status)
        # Made only when asked for (a port or a file): prometheus_client costs start-up time.
        self.metrics = (
            metrics.registry(lambda: self._snapshot)
            if settings.metrics_port is not None or settings.metrics_file is not None
            else None
        )

    async def heartbeat(self, store: Store, spool: SpoolDir) -> None:
        self._backlog = files, nbytes = spool.backlog()
        free = self.spool_free()
        with contextlib.suppress(StoreUnavailable):
            await store.heartbeat(
                {
                    "spool_dir": str(self.settings.spool_dir),
                    "pid": os.getpid(),
                    "version": __version__,
                    "started_at": self._started_at,
                    "backlog_files": files,
                    "backlog_bytes": nbytes,
                    "stats": {
                        **self.counters.as_dict(),
                        "status": self.status,
                        "truncated": spool.truncated,
                        "skipped_bytes": spool.skipped_bytes,
                        "spool_free_bytes": free,
                        "spool_full": self._spool_full,
                        "quarantine_dir": str(self.settings.quarantine_path()),
                    },
                }
            )
        self.report()

    def spool_free(self) -> int | None:
        """Free bytes on the spool's file system; warns once when workers can't write."""
        try:
            st = os.statvfs(self.settings.spool_dir)
        except OSError:
            return None
        free = st.f_bavail * st.f_frsize
        self._spool_space = (free, st.f_blocks * st.f_frsize)
        full = free < SPOOL_LOW_BYTES
        if full and not self._spool_full:
            log.warning(
                "spool file system of %s is full (%d bytes free): workers cannot spool, their "
                "output goes to their own streams",
                self.settings.spool_dir,
                free,
            )
        elif self._spool_full and not full:
            log.info("spool file system has room again (%d bytes free)", free)
        self._spool_full = full
        return free

    def report(self) -> None:
        """Tell systemd and the metrics (file and port) how things stand."""
        files, nbytes = self._backlog
        sdnotify.status(f"{self.status}; {self.counters.lines} lines stored; backlog {files} files")
        self._snapshot = metrics.Snapshot(
            counters=self.counters.as_dict(),
            status=self.status,
            backlog_files=files,
            backlog_bytes=nbytes,
            spool_free_bytes=self._spool_space[0],
            spool_size_bytes=self._spool_space[1],
            heartbeat=time.time(),
        )
        if self.settings.metrics_file is None or self.metrics is None:
            return
        try:
            metrics.write(self.settings.metrics_file, self.metrics)
        except OSError as exc:
            log.warning("cannot write TASKLOG_METRICS_FILE %s: %s", self.settings.metrics_file, exc)

    async def prune(self, store: Store) -> None:
        with contextlib.suppress(StoreUnavailable):
            dropped, deleted = await store.prune(self.settings.retention_days)
            if dropped or deleted:
                log.info(
                    "retention: dropped %d line partitions, deleted %d tasks", len(dropped), deleted
                )

    def index_in_background(self) -> None:
        """Keep the search indexes (`collector.searchindex`) in a thread of their own: at start
        and after each slice of the open day ends.

        A closed day's trigram index takes minutes to build on a large day: ingestion must not
        wait for it. A daemon thread, so a stop does not wait either: Postgres drops a build cut
        short, and the next round redoes it.
        """
        if self._indexer is not None and self._indexer.is_alive():
            return
        url, enabled = self.settings.require_database_url(), self.settings.search

        def run() -> None:
            try:
                log.info("%s", searchindex.apply(url, enabled))
            except Exception as exc:  # a thread's exception would only reach stderr
                log.warning("search index: %s", exc)

        self._indexer = threading.Thread(target=run, name="search-index", daemon=True)
        self._indexer.start()

    def summary(self, spool: SpoolDir, last: tuple[float, int]) -> tuple[float, int]:
        now, lines = time.monotonic(), self.counters.lines
        since, before = last
        files, nbytes = spool.backlog()
        if lines != before or files:
            log.info(
                "stored %d lines in %.0fs (%.0f lines/s); backlog %d files, %d bytes; "
                "%d corrupt records skipped, %d tasks lost so far",
                lines - before,
                now - since,
                (lines - before) / max(now - since, 1e-9),
                files,
                nbytes,
                self.counters.corrupt,
                self.counters.lost,
            )
        return now, lines
