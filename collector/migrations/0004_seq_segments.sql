-- Retries never share a seq (issue 11). A run's lines used to sit at `seq_base + n` for good,
-- with `seq_base` fixed when the run started: a retried task whose next run started on another
-- host before this run's later lines were stored got the same seqs for both runs. Seqs are now
-- allocated from `tasks.last_seq` at each commit, under the task row's lock: a run keeps going
-- at `seq_base + n` while nothing was allocated after it, and otherwise continues from the
-- task's last seq. Each such continuation is a segment: (first n, base) pairs, flattened, in
-- order, after the run's first segment (which is `seq_base` from n = 1).
ALTER TABLE spool_files ADD COLUMN seq_segments bigint[] NOT NULL DEFAULT '{}';
