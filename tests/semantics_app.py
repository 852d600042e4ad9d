"""A Celery app with one task per way a task can end and per way it can log, for
tests/integration/test_celery_semantics.py. Broker and backend: TASKLOG_REDIS_URL.

Each task prints ``<name> <task id> …`` lines so that a test can tell its lines apart."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path

import redis
from celery import Celery
from celery.exceptions import Ignore, Reject, SoftTimeLimitExceeded
from celery.utils.log import get_logger, get_task_logger

import capture_shim
from capture_shim import spool

_url = os.environ.get("TASKLOG_REDIS_URL", "redis://127.0.0.1:6379/0")
app = Celery("semantics", broker=_url, backend=_url)
app.conf.update(
    task_track_started=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    # An unacknowledged message of a dead worker comes back to a live one after this, and a
    # live worker looks for such messages every second (kombu's default sweep is every
    # 10 x 10 s: a redelivery then waited up to 100 s, beyond the tests' deadline).
    broker_transport_options={
        "visibility_timeout": 2,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    },
    result_extended=True,
)

capture_shim.install(app)

task_log = get_task_logger(__name__)
celery_log = get_logger("semantics.utils")
plain_log = logging.getLogger("semantics.plain")
alone_log = logging.getLogger("semantics.alone")  # does not propagate, has a handler of its own
alone_log.propagate = False
alone_log.addHandler(logging.StreamHandler(sys.__stderr__))
alone_log.setLevel(logging.INFO)
plain_log.setLevel(logging.INFO)


def _counter(key: str) -> int:
    client = redis.Redis.from_url(_url)
    try:
        return int(client.incr(f"semantics:{key}"))
    finally:
        client.close()


@app.task(bind=True, name="sem.ok")
def ok(self) -> str:
    print(f"ok {self.request.id} printed")
    return "done"


@app.task(bind=True, name="sem.boom")
def boom(self) -> None:
    print(f"boom {self.request.id} before")
    raise ValueError("boom on purpose")


@app.task(bind=True, name="sem.retry", max_retries=1, default_retry_delay=0)
def retry(self) -> str:
    print(f"retry {self.request.id} attempt {self.request.retries}")
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return "second time"


@app.task(bind=True, name="sem.soft", soft_time_limit=0.5)
def soft(self) -> None:
    print(f"soft {self.request.id} before")
    try:
        time.sleep(30)
    except SoftTimeLimitExceeded:
        print(f"soft {self.request.id} caught the soft limit")
        raise


@app.task(bind=True, name="sem.hard", time_limit=1)
def hard(self) -> None:
    print(f"hard {self.request.id} before")
    time.sleep(30)


@app.task(bind=True, name="sem.sleeper")
def sleeper(self) -> None:
    print(f"sleeper {self.request.id} started", flush=True)
    time.sleep(60)


@app.task(bind=True, name="sem.lost")
def lost(self) -> None:
    keep_spool_file(self.request.id)
    print(f"lost {self.request.id} before")
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(bind=True, name="sem.ignore")
def ignore(self) -> None:
    print(f"ignore {self.request.id} before")
    raise Ignore()


@app.task(bind=True, name="sem.reject")
def reject(self) -> None:
    print(f"reject {self.request.id} before")
    raise Reject("refused", requeue=False)


@app.task(bind=True, name="sem.reject_once", acks_late=True)
def reject_once(self) -> str:
    delivery = _counter(f"reject:{self.request.id}")
    print(f"reject_once {self.request.id} delivery {delivery}")
    if delivery == 1:
        raise Reject("once", requeue=True)
    return "accepted"


@app.task(bind=True, name="sem.replace")
def replace(self) -> None:
    print(f"replace {self.request.id} before")
    raise self.replace(ok.s())


def keep_spool_file(task_id: str) -> None:
    """A hard link to this run's spool file in TASKLOG_TEST_KEEP_DIR (when set), taken before
    the task prints and kills its process: the same inode, so afterwards it holds exactly
    what the file held at the kill."""
    keep = os.environ.get("TASKLOG_TEST_KEEP_DIR")
    if keep:
        name = f"{spool.safe_name(task_id)}.{os.getpid()}.*{spool.SUFFIX}"
        (path,) = Path(os.environ["TASKLOG_SPOOL_DIR"]).glob(name)
        os.link(path, Path(keep) / path.name)


@app.task(bind=True, name="sem.crash", acks_late=True)
def crash(self) -> str:
    delivery = _counter(f"crash:{self.request.id}")
    if delivery == 1:
        keep_spool_file(self.request.id)
    print(f"crash {self.request.id} delivery {delivery}", flush=True)
    if delivery == 1:  # the whole worker dies (its session), the message is not acknowledged
        os.killpg(os.getpgid(0), signal.SIGKILL)
        time.sleep(30)
    return "after the crash"


@app.task(bind=True, name="sem.logs")
def logs(self) -> str:
    tid = self.request.id
    task_log.warning("logs %s task logger", tid)
    celery_log.info("logs %s celery logger", tid)
    plain_log.error("logs %s plain logger", tid)
    alone_log.info("logs %s alone logger", tid)
    print(f"logs {tid} print")
    sys.stdout.write(f"logs {tid} sys.stdout\n")
    os.write(1, f"logs {tid} fd 1\n".encode())
    return "logged"
