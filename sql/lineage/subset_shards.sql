-- Members of one subset per shard.
SELECT shard, count(*) AS members
FROM subset_members
WHERE policy = $policy
GROUP BY shard
ORDER BY shard;
