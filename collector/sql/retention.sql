-- Retention: `lines` is partitioned by day so that old lines go by dropping a partition.
-- Identifiers in {braces} are composed with psycopg.sql (a partition name cannot be bound).

-- name: create_partition
CREATE TABLE IF NOT EXISTS {partition} PARTITION OF lines FOR VALUES FROM ({low}) TO ({high})

-- name: drop_partition
DROP TABLE IF EXISTS {partition}

-- name: line_partitions
SELECT c.relname
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
JOIN pg_class p ON p.oid = i.inhparent
WHERE p.relname = 'lines'

-- name: prune_tasks
DELETE FROM tasks
WHERE task_id IN (
    SELECT task_id FROM tasks
    WHERE created_at < %(cutoff)s AND coalesce(completed_at, updated_at) < %(cutoff)s
    LIMIT %(limit)s
)
