-- The caption group of each member of the subset, for retrieval and association audits.
SELECT key, shard, group_name
FROM audit_sample_groups
WHERE side = 'after'
ORDER BY shard, key;
