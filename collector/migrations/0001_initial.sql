-- celery-tasklog schema, version 1.

-- One row per Celery task id. A retried task keeps its row; its runs' lines follow each other.
CREATE TABLE tasks (
    task_id          text PRIMARY KEY,
    task_name        text,
    state            text NOT NULL DEFAULT 'PENDING',
    progress         real CHECK (progress IS NULL OR progress BETWEEN 0 AND 100),
    progress_message text,
    host             text,
    worker           text,
    pid              integer,
    parent_id        text,
    root_id          text,
    retries          integer NOT NULL DEFAULT 0,
    args             jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    completed_at     timestamptz,
    runtime          double precision,
    exc_type         text,
    exc_message      text,
    traceback        text,
    line_count       bigint NOT NULL DEFAULT 0,   -- lines stored (marker included)
    last_seq         bigint NOT NULL DEFAULT 0,   -- highest seq handed out to this task
    lines_omitted    bigint NOT NULL DEFAULT 0,   -- dropped by the head+tail bound
    spool_errors     bigint NOT NULL DEFAULT 0,   -- records the shim could not spool
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- The task list: newest first, keyset-paged on (created_at, task_id).
CREATE INDEX tasks_created ON tasks (created_at DESC, task_id DESC);
CREATE INDEX tasks_state_created ON tasks (state, created_at DESC);
CREATE INDEX tasks_name_created ON tasks (task_name, created_at DESC);
CREATE INDEX tasks_host_created ON tasks (host, created_at DESC);

-- Log lines, partitioned by day on the line's own time so that retention drops partitions.
-- (task_id, seq) is unique: ts comes from the spool record, so a replayed line carries the same
-- ts and lands in the same partition, where the primary key refuses it.
CREATE TABLE lines (
    task_id  text NOT NULL,
    seq      bigint NOT NULL,
    ts       timestamptz NOT NULL,
    stream   text NOT NULL,
    level    text,
    message  text NOT NULL,
    PRIMARY KEY (task_id, seq, ts)
) PARTITION BY RANGE (ts);

-- How far the collector of each host has stored each spool file; advanced in the same
-- transaction as the lines it covers, so a restart resumes exactly where the last commit ended.
CREATE TABLE spool_files (
    host        text NOT NULL,
    file        text NOT NULL,
    inode       bigint NOT NULL,
    "offset"    bigint NOT NULL,
    task_id     text NOT NULL,
    seq_base    bigint NOT NULL,        -- added to the file's per-run seq (retries continue)
    max_seq     bigint NOT NULL DEFAULT 0,
    head_lines  integer NOT NULL,       -- lines kept from the start of this run
    tail_lines  integer NOT NULL,       -- lines kept from the end of this run
    ended       boolean NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (host, file)
);

-- One row per collector: its heartbeat and what it has seen, for the diagnostic page.
CREATE TABLE collectors (
    host          text PRIMARY KEY,
    spool_dir     text NOT NULL,
    pid           integer NOT NULL,
    version       text NOT NULL,
    started_at    timestamptz NOT NULL,
    heartbeat_at  timestamptz NOT NULL,
    backlog_files integer NOT NULL DEFAULT 0,
    backlog_bytes bigint NOT NULL DEFAULT 0,
    stats         jsonb NOT NULL DEFAULT '{}'
);
