"""Names shared across processes, defined once and imported everywhere.

- Task states: Python imports them from here; SQL asks `tasklog_finished(state)` (a function
  created by `collector/migrations/0003_task_states.sql`, checked against these names by
  `tests/integration/test_states.py`) and writes a single state ``:'LOST'`` (`SQL_NAMES`,
  filled in by `tasklog.core.db.queries`); the browser pages get them in the JSON blob
  `api.pages` serves (`page_constants`).
- The task-id limit, in UTF-8 bytes: the shim refuses to spool a longer id, the collector
  refuses a start record with one, the API and the CLI answer a clear error.
- The streams of a line (the spool format, `capture_shim.spool`, writes them).
- The Redis channel names (their messages are in `tasklog.core.messages`).

Standard library only: the shim, which runs inside every worker, imports this module.
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

# Celery's own state names (`celery.states`), plus PROGRESS (the usual custom state of
# `update_state`) and LOST (a task whose worker died without an `end` record).
PENDING = "PENDING"
RECEIVED = "RECEIVED"
STARTED = "STARTED"
PROGRESS = "PROGRESS"
RETRY = "RETRY"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
REVOKED = "REVOKED"
#: `raise Ignore()`: the task took itself out of Celery's bookkeeping; its run is over.
IGNORED = "IGNORED"
#: `raise Reject()`: the task refused its message; this run is over (a requeued message
#: starts a new run, which sets the state again).
REJECTED = "REJECTED"
LOST = "LOST"

#: States after which a run writes nothing more: its lines are all stored.
FINISHED_STATES = frozenset({SUCCESS, FAILURE, REVOKED, IGNORED, REJECTED, LOST})
#: Finished states that are not a success: a progress bar shows no value for them.
UNSUCCESSFUL_STATES = FINISHED_STATES - {SUCCESS}
#: Every state a task is stored in, in the order a run goes through them.
STATES = (
    PENDING,
    RECEIVED,
    STARTED,
    PROGRESS,
    RETRY,
    SUCCESS,
    FAILURE,
    REVOKED,
    IGNORED,
    REJECTED,
    LOST,
)
ALL_STATES = frozenset(STATES)
#: Longest state stored: Celery's are short; a custom one (`update_state` takes any text) is cut.
STATE_CHARS = 32


def state_name(text: str) -> str | None:
    """A state a user names (a filter): one of `STATES` in any case, as stored; other text of 1
    to `STATE_CHARS` printable characters as given, a custom state; else None."""
    text = text.strip()
    if text.upper() in ALL_STATES:
        return text.upper()
    if 0 < len(text) <= STATE_CHARS and text.isprintable():
        return text
    return None


#: Longest task id, in UTF-8 bytes (bytes, since that is what Postgres indexes: a btree entry
#: holds at most ~2700 bytes). The spool, the collector, the API and the CLI all apply it.
MAX_TASK_ID_BYTES = 1024

#: The streams of a line: what a task printed, what it logged, and the lines the system itself
#: adds (the "N lines omitted" marker).
STDOUT = "stdout"
STDERR = "stderr"
LOG = "log"
MARKER = "marker"
#: The streams a task writes, in the order the log view offers them.
TASK_STREAMS = (STDOUT, STDERR, LOG)
#: Every stream a stored line may have.
STREAMS = (*TASK_STREAMS, MARKER)

#: The `logging` level names a `log` line usually carries (a custom level may be any short text).
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: Levels the log view counts as errors (with every stderr line).
ERROR_LEVELS = ("ERROR", "CRITICAL")

#: TASKLOG_MAX_LINES's default: lines kept per task run, the first half and the last half (the
#: shim writes it in each start record; the collector applies it to a start record without one).
DEFAULT_MAX_LINES = 1000
#: TASKLOG_MAX_LINE_BYTES's default: the longest line kept, in UTF-8 bytes (the shim's and the
#: collector's setting).
DEFAULT_MAX_LINE_BYTES = 16384
#: What ends a line cut at TASKLOG_MAX_LINE_BYTES, after the bytes kept ({} is how many bytes
#: were cut). `capture_shim/_speedups.c` writes the same text (its `cut`; a unit test compares).
CUT_NOTE = " … [line cut: {} more bytes]"


def cut_note(cut_bytes: int) -> str:
    """The note a cut line ends with, saying how many bytes were cut."""
    return CUT_NOTE.format(cut_bytes)


#: The names a ``.sql`` file may use, written ``:'NAME'`` (psql's quoted-variable syntax):
#: `tasklog.core.db.queries` puts each one's value in as a quoted literal when it loads them.
SQL_NAMES: dict[str, str] = {
    **{state: state for state in STATES},
    "STDOUT": STDOUT,
    "STDERR": STDERR,
    "LOG": LOG,
    "MARKER": MARKER,
}


def lines_channel(task_id: str) -> str:
    return LINES_CHANNEL_PREFIX + task_id


def task_id_problem(task_id: object) -> str | None:
    """Why a task id cannot be stored (it must be indexable text), or None when it can."""
    if not isinstance(task_id, str) or not task_id:
        return "is empty"
    if "\x00" in task_id:
        return "contains a NUL character"
    try:
        size = len(task_id.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid Unicode"
    if size > MAX_TASK_ID_BYTES:
        return f"is {size} bytes long (at most {MAX_TASK_ID_BYTES})"
    return None
