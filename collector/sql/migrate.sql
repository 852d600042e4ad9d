-- The migration runner's own statements (collector/migrate.py).

-- name: lock
-- Collectors that start together take turns; released at the end of the transaction.
SELECT pg_advisory_xact_lock(%(lock)s)

-- name: create_version_table
CREATE TABLE IF NOT EXISTS tasklog_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)

-- name: applied_versions
SELECT version FROM tasklog_migrations

-- name: record_version
INSERT INTO tasklog_migrations (version, name) VALUES (%(version)s, %(name)s)
