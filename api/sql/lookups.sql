-- Search, runs and workflows, loaded by api/lookups.py; the API and the CLI share them.
-- {match}, {span} and {where} are fixed fragments composed by psycopg.sql; values are bound.
-- The match_* and filter_* sections are such fragments (each filter given adds its own,
-- api/lookups.py Search.statement): they hold no comment, since they land mid-line.

-- name: search
-- Newest first, keyset-paged on (ts, task_id, seq). The page is cut in the inner query, right
-- above its sort, so Postgres keeps only the top rows (a bounded sort) however many lines
-- match; the task's name is joined to those rows alone. The trigram index on `message`
-- (migration 0005) serves the ILIKE and the regex form of the match alike.
SELECT l.task_id, t.task_name, l.seq, l.stream, l.level, l.ts, l.message, {span}
FROM (
    SELECT l.task_id, l.seq, l.stream, l.level, l.ts, l.message
    FROM lines AS l
    WHERE {match} AND {where}
    ORDER BY l.ts DESC, l.task_id DESC, l.seq DESC
    LIMIT %(limit)s
) AS l
LEFT JOIN tasks AS t ON t.task_id = l.task_id
ORDER BY l.ts DESC, l.task_id DESC, l.seq DESC

-- name: search_windows
-- Several windows' pages in one statement (each window's page is the `search` above, in
-- parentheses, joined by UNION ALL): one round trip and one plan instead of one per window,
-- for a rare text that walks every window. Then the page.
{pages}
ORDER BY ts DESC, task_id DESC, seq DESC
LIMIT %(limit)s

-- name: statement_timeout
-- A search may not hold its connection longer than this (a pathological regex).
SELECT set_config('statement_timeout', %(ms)s, true)

-- name: now
-- The time, and the valid trigram indexes of `lines` (a day's, a slice's: tasklog/core/trigram.py
-- names them), by which a search cuts its time windows.
SELECT now() AS now,
       ARRAY(
           SELECT c.relname::text
           FROM pg_index AS i
           JOIN pg_class AS c ON c.oid = i.indexrelid
           WHERE c.relname >= 'lines_' AND c.relname < 'lines`' AND right(c.relname, 5) = '_trgm'
             AND i.indisvalid
       ) AS indexes

-- name: match_substring
l.message ILIKE %(like)s

-- name: match_regex
l.message ~* %(pattern)s

-- name: filter_none
true

-- name: filter_task
EXISTS (SELECT 1 FROM tasks AS t WHERE t.task_id = l.task_id AND {task_where})

-- name: filter_task_states
t.state = ANY(%(states)s)

-- name: filter_task_name
t.task_name = %(name)s

-- name: filter_task_host
t.host = %(host)s

-- name: filter_streams
l.stream = ANY(%(streams)s)

-- name: filter_since
l.ts >= %(since)s

-- name: filter_until
l.ts < %(until)s

-- name: filter_before
(l.ts, l.task_id, l.seq) < (%(b_ts)s, %(b_id)s, %(b_seq)s)

-- name: filter_window_low
l.ts >= {w_low}

-- name: filter_window_high
l.ts < {w_high}

-- name: span_substring
strpos(lower(l.message), lower(%(text)s)) - 1 AS span_start,
strpos(lower(l.message), lower(%(text)s)) - 1 + length(%(text)s) AS span_end

-- name: span_regex
regexp_instr(l.message, %(pattern)s, 1, 1, 0, 'i') - 1 AS span_start,
regexp_instr(l.message, %(pattern)s, 1, 1, 1, 'i') - 1 AS span_end

-- name: runs
SELECT run, first_seq, host, worker, pid, state, started_at, completed_at, runtime,
       exc_type, exc_message
FROM task_runs
WHERE task_id = %(task_id)s
ORDER BY first_seq, run  -- the order their lines were numbered in, which sections follow

-- name: workflow_tasks
-- The root itself and every task naming it as root, in the order they were created.
SELECT {columns}
FROM tasks
WHERE root_id = %(root_id)s OR task_id = %(root_id)s
ORDER BY created_at, task_id
LIMIT %(limit)s

-- name: workflow_lines
-- Lines of several tasks, each after its own seq, merged in time order.
SELECT l.task_id, l.seq, l.ts, l.stream, l.level, l.message
FROM unnest(%(task_ids)s::text[], %(after)s::bigint[]) AS c(task_id, after_seq)
JOIN LATERAL (
    SELECT task_id, seq, ts, stream, level, message
    FROM lines
    WHERE lines.task_id = c.task_id AND lines.seq > c.after_seq
    ORDER BY seq
    LIMIT %(limit)s
) AS l ON true
ORDER BY l.ts, l.task_id, l.seq
LIMIT %(limit)s

-- name: roots_of
SELECT task_id, coalesce(root_id, task_id) AS root_id
FROM tasks
WHERE task_id = ANY(%(task_ids)s)

-- name: workflow_roots
-- Which of these tasks are the root of a workflow (another task names them as its root): the
-- task list links them to their workflow as it links the others of the workflow.
SELECT DISTINCT root_id
FROM tasks
WHERE root_id = ANY(%(task_ids)s) AND task_id <> root_id

-- name: workflow_size
-- 1 for a task alone, 2 for a task with company: whether a page links to a workflow view.
SELECT count(*) AS n
FROM (SELECT 1 FROM tasks WHERE root_id = %(root_id)s OR task_id = %(root_id)s LIMIT 2) AS s
