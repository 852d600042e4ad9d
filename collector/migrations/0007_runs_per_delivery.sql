-- Every delivery is its own run (issue 24). Migration 0005 numbered runs by Celery's `retries`,
-- so a message delivered again under the same count (a rejection with requeue, an acks_late
-- redelivery after a crash, a task replaced under its own id) took over the run before it and
-- erased its outcome. A run is now each start of the task, numbered 0, 1, 2… in the order the
-- collector stored them; `retries` keeps Celery's count of that run.
ALTER TABLE task_runs ADD COLUMN retries integer;
UPDATE task_runs SET retries = run;

CREATE OR REPLACE FUNCTION tasklog_track_run() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.started_at IS DISTINCT FROM OLD.started_at
       OR NEW.retries IS DISTINCT FROM OLD.retries THEN
        -- A new run, after every run of the task (the row is locked by the upsert that fired
        -- this: no other transaction numbers a run of this task meanwhile).
        INSERT INTO task_runs (task_id, run, retries, first_seq, host, worker, pid, state,
                               started_at)
        VALUES (NEW.task_id,
                coalesce((SELECT max(run) + 1 FROM task_runs WHERE task_id = NEW.task_id), 0),
                NEW.retries,
                CASE WHEN TG_OP = 'INSERT' THEN 1 ELSE OLD.last_seq + 1 END,
                NEW.host, NEW.worker, NEW.pid, NEW.state, NEW.started_at);
    ELSE
        -- The task's state changed: its latest run's outcome (an end stored after a later
        -- run began changes no task state; end_run records it on its own run).
        UPDATE task_runs SET
            state = NEW.state, completed_at = NEW.completed_at, runtime = NEW.runtime,
            exc_type = NEW.exc_type, exc_message = NEW.exc_message
        WHERE task_id = NEW.task_id
          AND run = (SELECT max(run) FROM task_runs WHERE task_id = NEW.task_id);
    END IF;
    RETURN NULL;
END
$$;
