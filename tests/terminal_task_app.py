"""A Celery app whose one task opts in by itself (`TerminalLoggingTask`), without `install`:
what the shim connects must then come from the task class alone, in time for `worker_init`."""

from __future__ import annotations

import os
import subprocess

from celery import Celery

from capture_shim import TerminalLoggingTask

_url = os.environ.get("TASKLOG_REDIS_URL", "redis://127.0.0.1:6379/0")
app = Celery("terminal-only", broker=_url, backend=_url)
app.conf.update(worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True)


@app.task(base=TerminalLoggingTask, name="terminal.mixed")
def mixed() -> str:
    print("py before")
    subprocess.run(["sh", "-c", "echo fd line"], check=True)
    print("py after")
    return "ok"
