-- audit_sample_groups: the caption group of each sample in either side (scores.caption_group,
-- from scores/concepts: the one group whose terms the caption names). Samples with no group
-- are left out.
CREATE OR REPLACE TEMP VIEW audit_sample_groups AS
SELECT side, shard, key, caption_group AS group_name
FROM audit_sides
WHERE caption_group IS NOT NULL;
