-- For each materialized policy, the index rows (index_keys) of the samples its subset keeps.
SELECT m.policy, k.row
FROM index_keys AS k
JOIN subset_members AS m USING (shard, key)
ORDER BY m.policy, k.row;
