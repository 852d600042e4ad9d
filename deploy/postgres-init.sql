-- The compose demo's Postgres, at its first start (docker-entrypoint-initdb.d): the API's own
-- login, which may only read, as docs/deploy.md ("Secrets") creates it. The schema owner is
-- tasklog (POSTGRES_USER), the login of the collectors and of `tasklog migrate`.
CREATE ROLE tasklog_api LOGIN PASSWORD 'tasklog_api';
GRANT CONNECT ON DATABASE tasklog TO tasklog_api;
GRANT USAGE ON SCHEMA public TO tasklog_api;
ALTER DEFAULT PRIVILEGES FOR ROLE tasklog IN SCHEMA public GRANT SELECT ON TABLES TO tasklog_api;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO tasklog_api;
