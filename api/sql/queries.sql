-- Named queries of the API and of the command line (`tasklog tasks`, `tasklog logs`), loaded
-- once by api/queries.py. They only read.
-- {columns} and {where} are filled with fixed fragments by psycopg.sql (the `filter_*` ones
-- below for {where}, joined by AND); values are always bound.

-- name: filter_none
true

-- name: filter_states
state = ANY(%(states)s)

-- name: filter_name
task_name = %(name)s

-- name: filter_host
host = %(host)s

-- name: filter_since
created_at >= %(since)s

-- name: filter_before
(created_at, task_id) < (%(b_at)s, %(b_id)s)

-- name: list_tasks
SELECT {columns}
FROM tasks
WHERE {where}
ORDER BY created_at DESC, task_id DESC
LIMIT %(limit)s;

-- name: get_task
SELECT {columns}, traceback
FROM tasks
WHERE task_id = %(task_id)s;

-- name: task_progress
-- What a stream re-checks: cheap, by primary key.
SELECT {columns}
FROM tasks
WHERE task_id = %(task_id)s;

-- name: tasks_updated_since
SELECT {columns}, updated_at
FROM tasks
WHERE updated_at > %(since)s - interval '2 seconds'  -- commits land after now()
ORDER BY updated_at
LIMIT %(limit)s;

-- name: lines_after
SELECT seq, ts, stream, level, message
FROM lines
WHERE task_id = %(task_id)s AND seq > %(after_seq)s
ORDER BY seq
LIMIT %(limit)s;

-- name: collectors
SELECT host, spool_dir, pid, version, started_at, heartbeat_at,
       extract(epoch FROM now() - heartbeat_at) AS heartbeat_age,
       backlog_files, backlog_bytes, stats
FROM collectors
ORDER BY host;

-- name: server_info
-- `now` is the time up to which this server shows every commit: on a replica
-- (TASKLOG_API_READ_URL) the commit time of the last transaction it replayed (none yet since
-- it started: its start), so that a task list read from it and the live stream resuming from
-- `now` leave no gap between them.
SELECT current_setting('server_version') AS version,
       CASE WHEN pg_is_in_recovery()
            THEN least(now(), coalesce(pg_last_xact_replay_timestamp(),
                                       pg_postmaster_start_time()))
            ELSE now() END AS now,
       (SELECT max(version) FROM tasklog_migrations) AS schema_version,
       (SELECT reltuples::bigint FROM pg_class WHERE oid = 'tasks'::regclass) AS tasks_estimate;
