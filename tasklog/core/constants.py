"""Names shared by the collector (writer) and the API (reader).

The spool record kinds and streams belong to `capture_shim.spool`, which owns the format.
"""

from __future__ import annotations

#: Redis channel carrying lines just stored for one task; the task id is appended.
LINES_CHANNEL_PREFIX = "tasklog:lines:"
#: Redis channel carrying task changes (start, progress, end) for every task.
TASKS_CHANNEL = "tasklog:tasks"
#: Redis sorted set of the tasks someone follows: task id scored by the Unix time its follow
#: mark expires. API processes keep it; the collector publishes lines only for these tasks.
WATCHED_KEY = "tasklog:watched"
#: Seconds a follow mark lasts unless refreshed (API processes refresh every third of it).
WATCH_TTL = 30.0

#: Celery's own state names, plus LOST for a task whose worker died without an `end` record.
PENDING = "PENDING"
STARTED = "STARTED"
PROGRESS = "PROGRESS"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
RETRY = "RETRY"
REVOKED = "REVOKED"
LOST = "LOST"

FINISHED_STATES = frozenset({SUCCESS, FAILURE, REVOKED, LOST})
ALL_STATES = frozenset({PENDING, STARTED, PROGRESS, RETRY, *FINISHED_STATES})


def lines_channel(task_id: str) -> str:
    return LINES_CHANNEL_PREFIX + task_id
