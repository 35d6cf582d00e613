-- The caption group of retrieved members (`retrieved`: shard, key, registered by the caller),
-- for the retrieval audit; members with no group are not returned.
SELECT r.shard, r.key, g.group_name
FROM retrieved AS r
JOIN audit_sample_groups AS g USING (shard, key)
WHERE g.side = 'after';
