-- The scored pool from the process's earlier read of it (registered by the caller as
-- `scores_read_before`), when the lake's files have not changed since: the same temp
-- table as snapshot_scores.sql without joining the score files again.
CREATE TEMP TABLE scores AS SELECT * FROM scores_read_before;
