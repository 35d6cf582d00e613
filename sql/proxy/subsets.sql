-- Every materialized subset's members with their draws, for the downstream proxy.
SELECT policy, key, shard, draws
FROM subset_members
ORDER BY policy, shard, key;
