-- Which task states are finished, for the SQL that must not move a finished task: the set
-- `tasklog.core.constants.FINISHED_STATES`, which owns it (tests/integration/test_states.py
-- fails when the two differ; changing the set means a new migration replacing this function).
-- IGNORED and REJECTED are finished: `raise Ignore()` / `raise Reject()` end the run.
-- A one-expression SQL function: the planner inlines it.
CREATE OR REPLACE FUNCTION tasklog_finished(state text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT state IN ('FAILURE', 'IGNORED', 'LOST', 'REJECTED', 'REVOKED', 'SUCCESS') $$;
