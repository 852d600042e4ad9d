-- Queries of `tasklog demo` of its own; the tasks it launched it reads with the API's named
-- queries (api.queries.statement).

-- name: database_exists
SELECT 1 FROM pg_database WHERE datname = %(name)s

-- name: create_database
CREATE DATABASE tasklog
