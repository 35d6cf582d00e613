-- policy_draws, on this connection only: the members a sampling policy drew and how many
-- times (`sampling_candidates` and `sampling_draws` are registered by the caller).
CREATE OR REPLACE TEMP VIEW policy_draws AS
SELECT c.key, c.shard, d.draws
FROM sampling_draws AS d
JOIN sampling_candidates AS c USING (position);
