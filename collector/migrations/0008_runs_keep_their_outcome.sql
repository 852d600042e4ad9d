-- Runs are append-only (issue 20): a later run of a task replaces the task's current row, so
-- each run keeps what that row held of it, its traceback and its place in a workflow (parent
-- and root) beside its outcome. Nothing a later run does reaches an earlier run's record.
ALTER TABLE task_runs ADD COLUMN traceback text;
ALTER TABLE task_runs ADD COLUMN parent_id text;
ALTER TABLE task_runs ADD COLUMN root_id text;

CREATE OR REPLACE FUNCTION tasklog_track_run() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.started_at IS DISTINCT FROM OLD.started_at
       OR NEW.retries IS DISTINCT FROM OLD.retries THEN
        -- A new run, after every run of the task (the row is locked by the upsert that fired
        -- this: no other transaction numbers a run of this task meanwhile).
        INSERT INTO task_runs (task_id, run, retries, first_seq, host, worker, pid, state,
                               started_at, parent_id, root_id)
        VALUES (NEW.task_id,
                coalesce((SELECT max(run) + 1 FROM task_runs WHERE task_id = NEW.task_id), 0),
                NEW.retries,
                CASE WHEN TG_OP = 'INSERT' THEN 1 ELSE OLD.last_seq + 1 END,
                NEW.host, NEW.worker, NEW.pid, NEW.state, NEW.started_at,
                NEW.parent_id, NEW.root_id);
    ELSE
        -- The task's state changed: its latest run's outcome (an end stored after a later
        -- run began changes no task state; end_run records it on its own run).
        UPDATE task_runs SET
            state = NEW.state, completed_at = NEW.completed_at, runtime = NEW.runtime,
            exc_type = NEW.exc_type, exc_message = NEW.exc_message, traceback = NEW.traceback
        WHERE task_id = NEW.task_id
          AND run = (SELECT max(run) FROM task_runs WHERE task_id = NEW.task_id);
    END IF;
    RETURN NULL;
END
$$;

UPDATE task_runs AS r SET traceback = t.traceback, parent_id = t.parent_id, root_id = t.root_id
FROM tasks AS t
WHERE t.task_id = r.task_id
  AND r.run = (SELECT max(run) FROM task_runs WHERE task_id = r.task_id);
