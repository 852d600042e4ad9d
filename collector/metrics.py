"""The collector's counters as Prometheus text: a file (TASKLOG_METRICS_FILE), a port, or both.

The file suits a host with node_exporter's textfile collector (the collector then opens no
listening socket); the port (TASKLOG_METRICS_PORT) suits Kubernetes, where Prometheus scrapes
pods. Both show the same snapshot, taken at each heartbeat; the file is rewritten atomically.
prometheus_client is imported by `registry`, not with this module: a collector without either
starts without it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tasklog.core.errors import ConfigError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

log = logging.getLogger(__name__)

_COUNTERS = {
    "lines": "Lines stored in Postgres.",
    "batches": "Batches committed.",
    "corrupt": "Corrupt spool records skipped.",
    "lost": "Tasks finalized as LOST (writer died without an end record).",
    "vanished": "Spool files that disappeared before they were fully stored.",
    "store_failures": "Batches that failed to commit and were retried.",
    "files_done": "Spool files fully stored and deleted.",
    "quarantined": "Spool files moved aside because Postgres refused one of their records.",
    "times_clamped": "Record times outside their run's window, clamped into it.",
}


class Counters:
    """What the collector did since it started (heartbeat stats and metrics)."""

    def __init__(self) -> None:
        self.lines = 0
        self.batches = 0
        self.corrupt = 0
        self.lost = 0
        self.vanished = 0
        self.store_failures = 0
        self.files_done = 0
        self.quarantined = 0
        self.times_clamped = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


@dataclass(frozen=True)
class Snapshot:
    """How the collector stands at one heartbeat."""

    counters: dict[str, int] = field(default_factory=dict)
    status: str = "starting"
    backlog_files: int = 0
    backlog_bytes: int = 0
    spool_free_bytes: int | None = None
    spool_size_bytes: int | None = None
    #: Unix time of the heartbeat; alerts compare it with the present ("collector down").
    heartbeat: float | None = None


def _families(data: Snapshot) -> Iterator[Metric]:
    """The metric families of one snapshot."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    for name, doc in _COUNTERS.items():
        family = CounterMetricFamily(f"tasklog_collector_{name}", doc)
        family.add_metric([], data.counters.get(name, 0))
        yield family
    gauges: list[tuple[str, str, float | None]] = [
        ("backlog_files", "Spool files with unstored bytes.", data.backlog_files),
        ("backlog_bytes", "Spool bytes not yet stored.", data.backlog_bytes),
        ("spool_free_bytes", "Free bytes on the spool's file system.", data.spool_free_bytes),
        ("spool_size_bytes", "Size of the spool's file system.", data.spool_size_bytes),
        (
            "heartbeat_timestamp_seconds",
            "Unix time of the collector's last heartbeat.",
            data.heartbeat,
        ),
    ]
    for name, doc, value in gauges:
        if value is not None:
            gauge = GaugeMetricFamily(f"tasklog_collector_{name}", doc)
            gauge.add_metric([], value)
            yield gauge
    up = GaugeMetricFamily(
        "tasklog_collector_up",
        "1 when storing normally, 0 while waiting for Postgres.",
        labels=["status"],
    )
    up.add_metric([data.status], 1 if data.status == "ok" else 0)
    yield up


def registry(read: Callable[[], Snapshot]) -> CollectorRegistry:
    """A registry whose every scrape reads the snapshot `read` returns."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.registry import Collector

    class Families(Collector):
        def collect(self) -> Iterator[Metric]:
            return _families(read())

    reg = CollectorRegistry(auto_describe=False)
    reg.register(Families())
    return reg


def write(path: Path, reg: CollectorRegistry) -> None:
    from prometheus_client import write_to_textfile

    write_to_textfile(str(path), reg)


@contextmanager
def served(reg: CollectorRegistry | None, host: str, port: int | None) -> Iterator[None]:
    """Serve `reg` over HTTP on `port` (any path) while the block runs; nothing if None."""
    if port is None or reg is None:
        yield
        return
    from prometheus_client import start_http_server

    try:
        server, thread = start_http_server(port, host, registry=reg)
    except OSError as exc:
        raise ConfigError(
            f"TASKLOG_METRICS_PORT: cannot listen on {host}:{port} ({exc.strerror})"
        ) from None
    log.info("metrics on http://%s:%d/metrics", host, server.server_port)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
