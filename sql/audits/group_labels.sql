-- The caption group of each member of the subset, for retrieval and association audits.
SELECT key, shard, group_name
FROM audit_sample_groups
WHERE stage = 'after'
ORDER BY shard, key;
