-- audit_stages: the scored pool ("before") and one policy's members ("after"), one row
-- per sample, tagged with its stage and its duplicate flag. getvariable('policy') names
-- the policy.
CREATE OR REPLACE TEMP VIEW audit_stages AS
WITH pool AS (
    SELECT s.*, coalesce(d.is_duplicate, false) AS is_duplicate
    FROM scores AS s
    LEFT JOIN duplicates AS d USING (shard, key)
)
SELECT 'before' AS stage, * FROM pool
UNION ALL
SELECT 'after' AS stage, * FROM pool
WHERE (shard, key) IN (
    SELECT (shard, key) FROM subset_members WHERE policy = getvariable('policy')
);
