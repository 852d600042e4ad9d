"""The demo Celery app. Broker and result backend come from TASKLOG_REDIS_URL."""

from __future__ import annotations

import os

from celery import Celery

import capture_shim

redis_url = os.environ.get("TASKLOG_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("demo", broker=redis_url, backend=redis_url, include=["tasklog.demo.tasks"])
app.conf.update(
    task_track_started=True,
    worker_prefetch_multiplier=1,
    task_acks_late=False,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=True,
)

capture_shim.install(app)
