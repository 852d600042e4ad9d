"""Names shared by the collector (writer) and the API (reader).

The spool record kinds and streams belong to `capture_shim.spool`, which owns the format.
"""

from __future__ import annotations

#: Redis channel carrying lines just stored for one task; the task id is appended.
LINES_CHANNEL_PREFIX = "tasklog:lines:"
#: Redis channel carrying task changes (start, progress, end) for every task.
TASKS_CHANNEL = "tasklog:tasks"

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
