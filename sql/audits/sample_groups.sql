-- audit_sample_groups: the caption group of each sample in either stage. A caption
-- belongs to a group when it matches that group's pattern and no other's;
-- `audit_group_patterns` (group_name, pattern) is registered by the caller.
CREATE OR REPLACE TEMP VIEW audit_sample_groups AS
SELECT s.stage, s.shard, s.key, any_value(p.group_name) AS group_name
FROM audit_stages AS s
JOIN audit_group_patterns AS p ON regexp_matches(lower(s.caption), p.pattern)
GROUP BY s.stage, s.shard, s.key
HAVING count(*) = 1;
