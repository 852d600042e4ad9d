-- Queries of the command line's read path.

-- name: recent_tasks
SELECT task_id, task_name, state AS status, progress, host, started_at, completed_at, runtime,
       line_count
FROM tasks
WHERE %(state)s::text IS NULL OR state = %(state)s::text
ORDER BY created_at DESC, task_id DESC
LIMIT %(limit)s

-- name: task_state
SELECT state, exc_type, exc_message, traceback FROM tasks WHERE task_id = %(task_id)s

-- name: task_lines
SELECT seq, ts, stream, level, message
FROM lines
WHERE task_id = %(task_id)s AND seq > %(after)s
ORDER BY seq
LIMIT 10000
