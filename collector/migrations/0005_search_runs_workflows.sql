-- Find and understand (issue 12): search over every line, each run of a retried task, and
-- the tasks of a workflow.

-- Search: pg_trgm makes `message ILIKE '%text%'` and `message ~* 'regex'` an index lookup
-- instead of a scan of every line. The trigram indexes themselves are built per day once the
-- day is over, off the ingest path (collector/searchindex.py: indexing each line as it is stored
-- cost the collector 8x its rate). Creating the extension may need rights the collector's
-- login lacks: then search still works, by scanning, and `tasklog migrate` says so.
DO $$
BEGIN
    CREATE EXTENSION IF NOT EXISTS pg_trgm;
EXCEPTION WHEN insufficient_privilege OR undefined_file OR feature_not_supported THEN
    RAISE WARNING 'tasklog: CREATE EXTENSION pg_trgm failed (%): search will scan', SQLERRM
        USING HINT = 'A superuser runs CREATE EXTENSION pg_trgm in this database, then '
                     '`tasklog migrate` builds the search indexes.';
END
$$;

-- Search pages are newest first: with the lines of each day in time order, a common word's
-- first page reads the newest lines backwards until the page is full, instead of sorting every
-- match of the day (14 ms instead of ~800 ms at 330k lines a day, docs/BENCHMARKS.md).
CREATE INDEX IF NOT EXISTS lines_ts ON lines (ts);

-- Workflows: the tasks sharing a root (chains, groups, chords).
CREATE INDEX tasks_root ON tasks (root_id) WHERE root_id IS NOT NULL;

-- Runs: a retried task keeps one `tasks` row whose lines continue across runs, so each run's
-- first seq, host and outcome is kept here, written by a trigger on `tasks` (a run starts when
-- `started_at` changes; its outcome when the state does). That is one small write per task
-- start and end, never per line. Celery numbers runs by `retries`: 0 is the first run.
CREATE TABLE task_runs (
    task_id      text NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    run          integer NOT NULL,
    first_seq    bigint NOT NULL,
    host         text,
    worker       text,
    pid          integer,
    state        text NOT NULL,
    started_at   timestamptz,
    completed_at timestamptz,
    runtime      double precision,
    exc_type     text,
    exc_message  text,
    PRIMARY KEY (task_id, run)
);

CREATE FUNCTION tasklog_track_run() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.started_at IS DISTINCT FROM OLD.started_at
       OR NEW.retries IS DISTINCT FROM OLD.retries THEN
        INSERT INTO task_runs AS r (task_id, run, first_seq, host, worker, pid, state, started_at)
        VALUES (NEW.task_id, NEW.retries,
                CASE WHEN TG_OP = 'INSERT' THEN 1 ELSE OLD.last_seq + 1 END,
                NEW.host, NEW.worker, NEW.pid, NEW.state, NEW.started_at)
        ON CONFLICT (task_id, run) DO UPDATE SET
            host = EXCLUDED.host, worker = EXCLUDED.worker, pid = EXCLUDED.pid,
            state = EXCLUDED.state, started_at = EXCLUDED.started_at,
            completed_at = NULL, runtime = NULL, exc_type = NULL, exc_message = NULL;
    ELSE
        UPDATE task_runs SET
            state = NEW.state, completed_at = NEW.completed_at, runtime = NEW.runtime,
            exc_type = NEW.exc_type, exc_message = NEW.exc_message
        WHERE task_id = NEW.task_id AND run = NEW.retries;
    END IF;
    RETURN NULL;
END
$$;

-- Only the updates that start or end a run call the function: a batch of lines that just
-- advances `last_seq` costs nothing more.
CREATE TRIGGER tasks_run_insert AFTER INSERT ON tasks
    FOR EACH ROW WHEN (NEW.started_at IS NOT NULL) EXECUTE FUNCTION tasklog_track_run();
CREATE TRIGGER tasks_run_update AFTER UPDATE ON tasks
    FOR EACH ROW WHEN (NEW.started_at IS NOT NULL AND (
        NEW.started_at IS DISTINCT FROM OLD.started_at
        OR NEW.retries IS DISTINCT FROM OLD.retries
        OR NEW.state IS DISTINCT FROM OLD.state
        OR NEW.completed_at IS DISTINCT FROM OLD.completed_at))
    EXECUTE FUNCTION tasklog_track_run();
