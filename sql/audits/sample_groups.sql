-- audit_sample_groups: the caption group of each sample in either stage. A caption
-- belongs to a group when it matches that group's pattern and no other's;
-- `audit_group_patterns` (group_name, pattern) is registered by the caller.
-- The patterns run once per pool sample and block, not once per stage or query: the
-- policy's members are a subset of the pool, so their groups are looked up in a temp
-- table that the group counts and the group labels both read (the regexes are most of
-- either query's time).
CREATE OR REPLACE TEMP TABLE audit_pool_groups AS
SELECT s.shard, s.key, any_value(p.group_name) AS group_name
FROM scores AS s
JOIN audit_group_patterns AS p ON regexp_matches(lower(s.caption), p.pattern)
GROUP BY s.shard, s.key
HAVING count(*) = 1;

CREATE OR REPLACE TEMP VIEW audit_sample_groups AS
SELECT 'before' AS stage, shard, key, group_name FROM audit_pool_groups
UNION ALL
SELECT 'after' AS stage, shard, key, group_name FROM audit_pool_groups
WHERE (shard, key) IN (
    SELECT (shard, key) FROM subset_members WHERE policy = getvariable('policy')
);
