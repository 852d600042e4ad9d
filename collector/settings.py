"""The collector's settings (`TASKLOG_*` environment variables)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pydantic import Field

from capture_shim.config import DEFAULT_SPOOL_DIR
from tasklog.core.constants import DEFAULT_MAX_LINE_BYTES
from tasklog.core.settings import Common


class CollectorSettings(Common):
    spool_dir: Path = Field(
        Path(DEFAULT_SPOOL_DIR), description="Directory the workers' shim writes spool files to."
    )
    batch_lines: int = Field(
        20_000, ge=1, le=1_000_000, description="Most lines stored in one transaction."
    )
    batch_bytes: int = Field(
        16 << 20, ge=1 << 16, description="Most spool bytes read for one transaction."
    )
    debounce_ms: int = Field(
        10,
        ge=1,
        le=5000,
        description="The least time between the reads of two batches while files keep"
        " changing (a change after a quiet spell is read at once); the file watcher reports a"
        " file's changes at most once every tenth of it (1 to 10 ms).",
    )
    rescan_interval: float = Field(
        2.0, gt=0, description="Seconds between full scans of the spool dir (misses no file)."
    )
    orphan_timeout: float = Field(
        60.0, gt=0, description="Idle seconds after which a file whose writer died is LOST."
    )
    retention_days: int = Field(
        30, ge=1, description="Days of tasks and lines kept; older partitions are dropped."
    )
    heartbeat_interval: float = Field(
        5.0, gt=0, description="Seconds between heartbeats (diagnostic page, health)."
    )
    summary_interval: float = Field(
        60.0, gt=0, description="Seconds between the info-level summary log lines."
    )
    metrics_file: Path | None = Field(
        None, description="If set, Prometheus text metrics are written to this file."
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="If set, Prometheus metrics are served on this port."
    )
    metrics_host: str = Field(
        "127.0.0.1", description="Address of the metrics port (0.0.0.0 for a scraped pod)."
    )
    stop_drain_timeout: float = Field(
        10.0,
        ge=0,
        description="Seconds spent at stop storing what the spool holds (0: stop at once).",
    )
    max_line_bytes: int = Field(
        DEFAULT_MAX_LINE_BYTES,
        ge=64,
        description="Longest line the collector keeps (the shim's cap: a file written by "
        "anything else is held to it too).",
    )
    quarantine_dir: Path | None = Field(
        None,
        description="Where spool files Postgres refuses are moved, on the spool's file system "
        "(default: `quarantine` in the spool dir).",
    )
    lock_dir: Path | None = Field(
        None,
        description="Directory of the lock file that keeps one collector per spool dir "
        "(default: $RUNTIME_DIRECTORY, else $XDG_RUNTIME_DIR, else the temp dir).",
    )
    failover_grace: float = Field(
        0.0,
        ge=0,
        description="Seconds a stored, finished spool file is kept for a failover to an"
        " asynchronous standby that missed its commit (then it is read again); gone sooner once"
        " every standby confirms the commit. 0: deleted at once (one server, synchronous standby).",
    )
    prune_interval: float = Field(
        3600.0, gt=0, description="Seconds between the collector's own retention prunes."
    )

    def quarantine_path(self) -> Path:
        return self.quarantine_dir or self.spool_dir / "quarantine"

    def lock_path(self) -> Path:
        """Where the lock directory is: the service's runtime directory when systemd gives one."""
        if self.lock_dir is not None:
            return self.lock_dir
        for variable in ("RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"):
            # systemd may list several runtime directories, separated by colons.
            value = os.environ.get(variable, "").split(":")[0]
            if value:
                return Path(value)
        return Path(tempfile.gettempdir())
