-- The search index switch (TASKLOG_SEARCH), run by `tasklog migrate` after the migrations.

-- name: trgm_schema
SELECT n.nspname
FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
WHERE e.extname = 'pg_trgm'

-- name: create_extension
CREATE EXTENSION IF NOT EXISTS pg_trgm

-- name: index_exists
SELECT 1 FROM pg_class WHERE relname = %(name)s AND relkind IN ('i', 'I')

-- name: create_index
-- On the partitioned table: every day partition, present and future, gets its own.
CREATE INDEX IF NOT EXISTS lines_message_trgm ON lines USING gin (message {ops})

-- name: create_ts_index
-- Newest-first pages read each day's lines backwards in time order (migration 0005).
CREATE INDEX IF NOT EXISTS lines_ts ON lines (ts)

-- name: drop_index
DROP INDEX IF EXISTS lines_message_trgm

-- name: drop_ts_index
DROP INDEX IF EXISTS lines_ts
