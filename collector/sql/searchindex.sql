-- The search indexes (TASKLOG_SEARCH), kept by `tasklog index` and `tasklog migrate`
-- (collector/searchindex.py).

-- name: take_lease
-- A row, not a lock held by the session: CREATE INDEX CONCURRENTLY runs outside any
-- transaction, and behind a transaction-pooling PgBouncer a session is no one connection.
INSERT INTO search_index_lease AS l (holder, until)
VALUES (%(holder)s, now() + make_interval(secs => %(seconds)s))
ON CONFLICT (singleton) DO UPDATE SET holder = EXCLUDED.holder, until = EXCLUDED.until
    WHERE l.until < now() OR l.holder = EXCLUDED.holder
RETURNING holder

-- name: drop_lease
DELETE FROM search_index_lease WHERE holder = %(holder)s

-- name: trgm_schema
SELECT n.nspname
FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
WHERE e.extname = 'pg_trgm'

-- name: create_extension
CREATE EXTENSION IF NOT EXISTS pg_trgm

-- name: day_partitions
-- The day partitions of `lines` (named by the collector, lines_YYYYMMDD), newest first, with
-- whether the day is over (UTC) and the state of its trigram index.
SELECT c.relname AS partition,
       c.relname || '_message_trgm' AS index,
       to_date(substr(c.relname, 7), 'YYYYMMDD') < (now() AT TIME ZONE 'UTC')::date AS closed,
       i.indisvalid AS valid
FROM pg_inherits AS inh
JOIN pg_class AS c ON c.oid = inh.inhrelid
JOIN pg_class AS p ON p.oid = inh.inhparent
LEFT JOIN pg_class AS ic ON ic.relname = c.relname || '_message_trgm'
    AND ic.relnamespace = c.relnamespace
LEFT JOIN pg_index AS i ON i.indexrelid = ic.oid
WHERE p.relname = 'lines' AND c.relname ~ '^lines_[0-9]{8}$'
ORDER BY c.relname DESC

-- name: index_exists
SELECT 1 FROM pg_class WHERE relname = %(name)s AND relkind IN ('i', 'I')

-- name: create_day_index
-- CONCURRENTLY: the collector may still write late lines of that day meanwhile.
CREATE INDEX CONCURRENTLY IF NOT EXISTS {index} ON {partition} USING gin (message {ops})

-- name: drop_day_index
DROP INDEX CONCURRENTLY IF EXISTS {index}

-- name: create_ts_index
-- Newest-first pages read each day's lines backwards in time order (migration 0005).
CREATE INDEX IF NOT EXISTS lines_ts ON lines (ts)

-- name: drop_ts_index
DROP INDEX IF EXISTS lines_ts

-- name: drop_parent_index
-- A trigram index on the whole partitioned table (0005 made one before it was measured) puts
-- every line's trigrams on the ingest path: 8x slower. Days are indexed once closed instead.
DROP INDEX IF EXISTS lines_message_trgm

-- name: now
SELECT now()

-- name: slice_indexes
-- The slices' partial trigram indexes (tasklog/core/trigram.py names them) and their state.
SELECT c.relname, i.indisvalid
FROM pg_index AS i
JOIN pg_class AS c ON c.oid = i.indexrelid
WHERE c.relname ~ '^lines_[0-9]{8}_[0-9]{4}_[0-9]{4}_trgm$'

-- name: partition_exists
SELECT 1 FROM pg_class WHERE relname = %(name)s AND relkind = 'r'

-- name: slice_has_lines
SELECT 1 FROM {partition} WHERE ts >= %(low)s AND ts < %(high)s LIMIT 1

-- name: create_slice_index
-- A slice of the open day: a partial index, so the lines after it (the day goes on) cost the
-- collector nothing but the test of its predicate; a late line inside it is indexed as usual.
-- CONCURRENTLY: the collector goes on writing to the partition meanwhile.
CREATE INDEX CONCURRENTLY IF NOT EXISTS {index} ON {partition} USING gin (message {ops})
WHERE ts >= {low} AND ts < {high}
