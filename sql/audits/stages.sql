-- audit_stages: the scored pool ("before") and one policy's members ("after"), one row
-- per sample, tagged with its stage. getvariable('policy') names the policy.
CREATE OR REPLACE TEMP VIEW audit_stages AS
SELECT 'before' AS stage, s.*
FROM scores AS s
UNION ALL
SELECT 'after' AS stage, s.*
FROM scores AS s
WHERE (s.shard, s.key) IN (
    SELECT (shard, key) FROM subset_members WHERE policy = getvariable('policy')
);
