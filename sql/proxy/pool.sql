-- The scored pool, from which the proxy's random half is drawn.
SELECT key, shard
FROM scores
ORDER BY shard, key;
