-- The collector's batch transaction and bookkeeping. Parameters are always bound (%(name)s).
-- States and streams are written :'LOST', :'MARKER': tasklog.core.db.queries puts in the values
-- of tasklog.core.constants.SQL_NAMES. Whether a state is finished is asked of
-- tasklog_finished() (migration 0003).

-- name: copy_lines
-- Binary rows (collector.copydata): Postgres takes the seq and the time as it stores them.
COPY lines (task_id, seq, ts, stream, level, message) FROM STDIN (FORMAT binary)

-- name: load_files
SELECT file, inode, "offset", task_id, seq_base, max_seq, head_lines, tail_lines, ended,
       seq_segments
FROM spool_files
WHERE host = %(host)s

-- name: lock_task
-- A task whose runs go on in this batch: its row locked until the commit, so that the seqs
-- the batch allocates from last_seq are its alone (see Store._place).
SELECT last_seq FROM tasks WHERE task_id = %(task_id)s FOR UPDATE

-- name: lock_tasks
-- lock_task for many tasks at once, locked in the order given (Store._place sorts them).
SELECT t.task_id, t.last_seq
FROM json_to_recordset(%(rows)s::json) AS u (n int, task_id text)
JOIN tasks AS t ON t.task_id = u.task_id
WHERE t.task_id = ANY (ARRAY(
      SELECT i.task_id FROM json_to_recordset(%(rows)s::json) AS i (task_id text)))
ORDER BY u.n
FOR UPDATE OF t

-- name: start_tasks
-- New runs of tasks, one per task, upserted in the order given (Store._place sorts them): each
-- STARTED, with its details, and the seq its lines continue from (the upsert locks the row
-- until the commit, as lock_task does). The rows come as one JSON array (Store._rows).
INSERT INTO tasks AS t (task_id, task_name, state, host, worker, pid, parent_id, root_id,
                        retries, args, created_at, started_at, updated_at)
SELECT u.task_id, u.name, :'STARTED', u.host, u.worker, u.pid, u.parent_id, u.root_id,
       u.retries, u.args::jsonb, to_timestamp(u.t), to_timestamp(u.t), now()
FROM json_to_recordset(%(rows)s::json)
     AS u (n int, task_id text, name text, host text, worker text, pid int4, parent_id text,
           root_id text, retries int4, args text, t float8)
ORDER BY u.n
ON CONFLICT (task_id) DO UPDATE SET
    task_name = EXCLUDED.task_name,
    state = :'STARTED',
    host = EXCLUDED.host,
    worker = EXCLUDED.worker,
    pid = EXCLUDED.pid,
    parent_id = EXCLUDED.parent_id,
    root_id = EXCLUDED.root_id,
    retries = EXCLUDED.retries,
    args = coalesce(EXCLUDED.args, t.args),
    started_at = EXCLUDED.started_at,
    completed_at = NULL,
    runtime = NULL,
    progress = NULL,
    progress_message = NULL,
    exc_type = NULL,
    exc_message = NULL,
    traceback = NULL,
    updated_at = now()
-- A task that succeeded or failed is settled: a run that does not come after it (Celery
-- numbers a retry's run higher; a redelivery follows LOST, REJECTED, IGNORED, RETRY) is not
-- a run of it but a file claiming it. It changes nothing, and no row comes back.
WHERE NOT (t.state IN (:'SUCCESS', :'FAILURE') AND t.retries >= EXCLUDED.retries)
RETURNING t.task_id, t.last_seq

-- name: advance_task
-- Lines stored and progress seen in one batch; a finished task keeps its final state.
-- This and the statements below take their rows as one JSON array (at most one row per task:
-- Store._commit runs a task's second row in a second round, `_rounds`). Those on tasks find
-- their target rows by `= ANY` of the rows' ids: an index scan, whatever the planner guesses
-- of the JSON's row count (a join alone chose to scan the whole table).
UPDATE tasks AS t SET
    line_count = t.line_count + u.added,
    last_seq = greatest(t.last_seq, u.last_seq),
    progress = coalesce(u.progress, t.progress),
    progress_message = coalesce(u.progress_message, t.progress_message),
    state = CASE WHEN tasklog_finished(t.state) THEN t.state
                 ELSE coalesce(u.state, t.state) END,
    updated_at = now()
FROM json_to_recordset(%(rows)s::json)
     AS u (task_id text, added int8, last_seq int8, progress real, progress_message text,
           state text)
WHERE t.task_id = u.task_id
  AND t.task_id = ANY (ARRAY(
      SELECT i.task_id FROM json_to_recordset(%(rows)s::json) AS i (task_id text)))

-- name: finish_task
-- The end of a run, with the lines and progress the batch stored of it (what advance_task
-- does, in the same update: one row version fewer; none for a task with several runs in the
-- batch, advanced apart before). The end of a run that is no longer the task's latest (a later
-- run began after its first seq: an immediate retry stored in the same batch, or on another
-- host), or a RETRY end stored after the retried run finished, leaves the task's state alone;
-- its counts still add up. end_run records it on its own run.
UPDATE tasks AS t SET
    line_count = t.line_count + x.added,
    last_seq = greatest(t.last_seq, x.last_seq),
    progress = CASE WHEN x.state = :'SUCCESS' THEN 100
                    ELSE coalesce(x.progress, t.progress) END,
    progress_message = coalesce(x.progress_message, t.progress_message),
    state = CASE WHEN x.late THEN x.advanced ELSE x.state END,
    completed_at = CASE WHEN x.late THEN t.completed_at ELSE to_timestamp(x.t) END,
    runtime = CASE WHEN x.late THEN t.runtime ELSE x.runtime END,
    exc_type = CASE WHEN x.late THEN t.exc_type ELSE x.exc_type END,
    exc_message = CASE WHEN x.late THEN t.exc_message ELSE x.exc_message END,
    traceback = CASE WHEN x.late THEN t.traceback ELSE x.traceback END,
    spool_errors = t.spool_errors + x.errors,
    lines_omitted = t.lines_omitted + x.omitted,
    updated_at = now()
FROM (SELECT v.*,
             (v.state = :'RETRY' AND tasklog_finished(v.advanced))
             OR EXISTS (SELECT 1 FROM task_runs AS r
                        WHERE r.task_id = v.task_id AND r.first_seq > v.first_seq) AS late
      FROM (SELECT u.*,
                   -- The state advance_task would leave.
                   (SELECT CASE WHEN tasklog_finished(o.state) THEN o.state
                                ELSE coalesce(u.progress_state, o.state) END
                    FROM tasks AS o WHERE o.task_id = u.task_id) AS advanced
            FROM json_to_recordset(%(rows)s::json)
                 AS u (task_id text, added int8, last_seq int8, progress real,
                       progress_message text, progress_state text, state text, t float8,
                       runtime float8, exc_type text, exc_message text, traceback text,
                       errors int8, omitted int8, first_seq int8)
            OFFSET 0) AS v
      OFFSET 0) AS x  -- computed once per row, not once per use of `late`
WHERE t.task_id = x.task_id
  AND t.task_id = ANY (ARRAY(
      SELECT i.task_id FROM json_to_recordset(%(rows)s::json) AS i (task_id text)))

-- name: lose_task
-- The writer died without an end record.
UPDATE tasks SET
    state = :'LOST',
    completed_at = now(),
    exc_message = %(reason)s,
    lines_omitted = lines_omitted + %(omitted)s,
    updated_at = now()
WHERE task_id = %(task_id)s AND NOT tasklog_finished(state)

-- name: trim_tail
-- The head+tail bound: lines that left the kept tail window of a run.
DELETE FROM lines AS l
USING json_to_recordset(%(rows)s::json) AS u (task_id text, low int8, high int8)
WHERE l.task_id = u.task_id AND l.seq > u.low AND l.seq <= u.high
  AND l.task_id = ANY (ARRAY(
      SELECT i.task_id FROM json_to_recordset(%(rows)s::json) AS i (task_id text)))

-- name: insert_marker
INSERT INTO lines (task_id, seq, ts, stream, level, message)
SELECT u.task_id, u.seq, to_timestamp(u.t), :'MARKER', NULL, u.message
FROM json_to_recordset(%(rows)s::json) AS u (task_id text, seq int8, t float8, message text)
ON CONFLICT DO NOTHING

-- name: save_file
INSERT INTO spool_files AS f (host, file, inode, "offset", task_id, seq_base, max_seq,
                              head_lines, tail_lines, ended, seq_segments, updated_at)
SELECT u.host, u.file, u.inode, u.offset, u.task_id, u.seq_base, u.max_seq, u.head, u.tail,
       u.ended, u.segments, now()
FROM json_to_recordset(%(rows)s::json)
     AS u (host text, file text, inode int8, "offset" int8, task_id text, seq_base int8,
           max_seq int8, head int4, tail int4, ended bool, segments int8[])
ON CONFLICT (host, file) DO UPDATE SET
    inode = EXCLUDED.inode,
    "offset" = EXCLUDED."offset",
    seq_base = EXCLUDED.seq_base,
    seq_segments = EXCLUDED.seq_segments,
    max_seq = EXCLUDED.max_seq,
    ended = EXCLUDED.ended,
    updated_at = now()

-- name: replication_position
-- Where this primary's WAL is, and the lowest position every standby streaming from it has
-- flushed (NULL without a standby, or when this login may not see their positions: it needs
-- pg_monitor). Byte counts, compared in Python (collector/keep.py).
SELECT pg_current_wal_lsn() - '0/0'::pg_lsn AS written,
       CASE WHEN count(*) > 0 AND count(flush_lsn) = count(*)
            THEN min(flush_lsn) - '0/0'::pg_lsn END AS confirmed
FROM pg_stat_replication

-- name: forget_files
-- The offsets rows of files gone from the spool (deleted once stored, finalized), all at once.
DELETE FROM spool_files WHERE host = %(host)s AND file = ANY(%(files)s)

-- name: changed_tasks
SELECT task_id, task_name, state AS status, progress, progress_message, host,
       started_at, completed_at, runtime, line_count, last_seq, exc_type, exc_message,
       parent_id, root_id
FROM tasks
WHERE task_id = ANY(%(ids)s)

-- name: heartbeat
INSERT INTO collectors AS c (host, spool_dir, pid, version, started_at, heartbeat_at,
                             backlog_files, backlog_bytes, stats)
VALUES (%(host)s, %(spool_dir)s, %(pid)s, %(version)s, %(started_at)s, now(),
        %(backlog_files)s, %(backlog_bytes)s, %(stats)s)
ON CONFLICT (host) DO UPDATE SET
    spool_dir = EXCLUDED.spool_dir,
    pid = EXCLUDED.pid,
    version = EXCLUDED.version,
    started_at = EXCLUDED.started_at,
    heartbeat_at = now(),
    backlog_files = EXCLUDED.backlog_files,
    backlog_bytes = EXCLUDED.backlog_bytes,
    stats = EXCLUDED.stats

-- name: run_first_seq
-- The seq a new run's lines begin at, as the collector allocated it (tasklog_track_run, in
-- migration 0007, records the run with a guess from the task's last seq). The run is the one
-- its start record began: two deliveries of one task may share their `retries`, never their
-- start time.
UPDATE task_runs AS r SET first_seq = u.first_seq
FROM json_to_recordset(%(rows)s::json) AS u (task_id text, t float8, first_seq int8)
WHERE r.task_id = u.task_id AND r.started_at = to_timestamp(u.t)

-- name: end_run
-- A run's end on its own run, found by where its lines begin (a run without lines shares that
-- seq with the next run: then the trigger's record of the task's latest run stands alone).
UPDATE task_runs AS r SET
    state = u.state, completed_at = to_timestamp(u.t), runtime = u.runtime,
    exc_type = u.exc_type, exc_message = u.exc_message, traceback = u.traceback
FROM json_to_recordset(%(rows)s::json)
     AS u (task_id text, state text, t float8, runtime float8, exc_type text, exc_message text,
           traceback text, first_seq int8)
WHERE r.task_id = u.task_id AND r.first_seq = u.first_seq
  AND (SELECT count(*) FROM task_runs WHERE task_id = u.task_id
       AND first_seq = u.first_seq) = 1
