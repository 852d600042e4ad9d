"""Prometheus metrics of the API process, served as text at ``/tasklog/metrics``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry(auto_describe=True)

SSE_CLIENTS = Gauge(
    "tasklog_api_sse_clients", "SSE clients connected.", ["stream"], registry=REGISTRY
)
SSE_EVENTS = Counter(
    "tasklog_api_sse_events", "SSE events sent, by type.", ["type"], registry=REGISTRY
)
SSE_BROADCAST_MEMBERS = Gauge(
    "tasklog_api_sse_broadcast_members",
    "SSE clients in step with their task's broadcast, which writes for them (api.broadcast).",
    registry=REGISTRY,
)
SSE_CUT_OFF = Counter(
    "tasklog_api_sse_cut_off",
    "SSE clients cut off because their buffer overflowed.",
    registry=REGISTRY,
)
SSE_SEND_TIMEOUTS = Counter(
    "tasklog_api_sse_send_timeouts",
    "SSE clients dropped because a write waited longer than TASKLOG_API_SEND_TIMEOUT.",
    registry=REGISTRY,
)
SSE_REFUSED = Counter(
    "tasklog_api_sse_refused",
    "SSE streams refused with 503 because TASKLOG_API_MAX_STREAMS were open.",
    registry=REGISTRY,
)
REPLICA_FILL_INS = Counter(
    "tasklog_api_replica_fill_ins",
    "Stream catch-ups that read from the primary the lines a lagging TASKLOG_API_READ_URL"
    " replica did not show yet.",
    registry=REGISTRY,
)
REQUEST_SECONDS = Histogram(
    "tasklog_api_request_seconds",
    "Latency of HTTP requests (SSE: until the stream's headers are sent).",
    ["route", "method", "status"],
    registry=REGISTRY,
)
HUB_MESSAGES = Counter(
    "tasklog_api_redis_messages", "Messages received from Redis.", ["channel"], registry=REGISTRY
)
HUB_DROPPED = Counter(
    "tasklog_api_redis_dropped",
    "Messages on tasklog's Redis channels dropped as not the collector's (checked field by field).",
    ["channel"],
    registry=REGISTRY,
)
HUB_RECONNECTS = Counter(
    "tasklog_api_redis_reconnects",
    "Times the Redis subscription was re-established.",
    registry=REGISTRY,
)
REDIS_LIVE = Gauge(
    "tasklog_api_redis_live", "1 while the Redis subscription holds.", registry=REGISTRY
)
REDIS_TASK_CHANNELS = Gauge(
    "tasklog_api_redis_task_channels",
    "Task line channels this process subscribes (tasks its clients follow).",
    registry=REGISTRY,
)


def render() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
