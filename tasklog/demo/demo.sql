-- Queries of `tasklog demo`: it shows the captured lines of the tasks it launched.

-- name: database_exists
SELECT 1 FROM pg_database WHERE datname = %(name)s

-- name: create_database
CREATE DATABASE tasklog

-- name: task
SELECT task_name, state, exc_type, exc_message FROM tasks WHERE task_id = %(task_id)s

-- name: task_lines
SELECT seq, stream, message FROM lines WHERE task_id = %(task_id)s ORDER BY seq
