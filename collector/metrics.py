"""The collector's counters as Prometheus text, written to TASKLOG_METRICS_FILE.

A file rather than a port: node_exporter's textfile collector picks it up, and the collector
opens no listening socket. It is rewritten atomically at each heartbeat.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_COUNTERS = {
    "lines": "Lines stored in Postgres.",
    "batches": "Batches committed.",
    "corrupt": "Corrupt spool records skipped.",
    "lost": "Tasks finalized as LOST (writer died without an end record).",
    "vanished": "Spool files that disappeared before they were fully stored.",
    "store_failures": "Batches that failed to commit and were retried.",
    "files_done": "Spool files fully stored and deleted.",
}


class _Snapshot(Collector):
    def __init__(self, read: Callable[[], dict[str, object]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        data = self._read()
        counters = data["counters"]
        assert isinstance(counters, dict)
        for name, doc in _COUNTERS.items():
            family = CounterMetricFamily(f"tasklog_collector_{name}", doc)
            family.add_metric([], counters.get(name, 0))
            yield family
        for name, doc in (
            ("backlog_files", "Spool files with unstored bytes."),
            ("backlog_bytes", "Spool bytes not yet stored."),
        ):
            gauge = GaugeMetricFamily(f"tasklog_collector_{name}", doc)
            gauge.add_metric([], data[name])  # type: ignore[arg-type]
            yield gauge
        up = GaugeMetricFamily(
            "tasklog_collector_up",
            "1 when storing normally, 0 while waiting for Postgres.",
            labels=["status"],
        )
        up.add_metric([str(data["status"])], 1 if data["status"] == "ok" else 0)
        yield up


def write(path: Path, read: Callable[[], dict[str, object]]) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(read))
    write_to_textfile(str(path), registry)
