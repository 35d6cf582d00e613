-- Exact and perceptual-hash matches among the near-duplicate step's samples: each sample
-- with the first sample (in shard, key order) of its group, the samples that share its
-- sha256 (reason 'exact') or its phash (reason 'phash'). Registered by the step:
-- `dedup_shards` the covered shards, `dedup_dirty` the shards compared again (every one in a
-- full run), `dedup_linked` (shard, key) of samples whose hash link to a changed shard's
-- sample was dropped. Only the groups holding a dirty shard's sample or a linked sample are
-- searched: after one new shard, a few groups of the pool's.
WITH pool AS (
    SELECT shard, key, sha256, phash
    FROM read_parquet('{{lake}}/shards/*/scores/image_hashes.parquet')
    WHERE shard IN (SELECT shard FROM dedup_shards)
),
seeds AS (
    -- The hashes whose groups are searched again.
    SELECT sha256, phash FROM pool WHERE shard IN (SELECT shard FROM dedup_dirty)
    UNION ALL
    SELECT sha256, phash FROM pool SEMI JOIN dedup_linked USING (shard, key)
),
grouped AS (
    -- IN filters on one hash column each: a join on a (reason, hash) union of the whole
    -- pool's hashes took 10 s at 10M samples for one new shard, these 2 s.
    SELECT shard, key, 'exact' AS reason, sha256 AS hash
    FROM pool WHERE sha256 IN (SELECT sha256 FROM seeds)
    UNION ALL
    SELECT shard, key, 'phash' AS reason, phash::VARCHAR AS hash
    FROM pool WHERE phash IN (SELECT phash FROM seeds)
),
covered AS (
    -- Only samples the step covers (assigned against the current centroids) are grouped;
    -- the few grouped rows join the assignment, not the other way round.
    SELECT g.shard, g.key, g.reason, g.hash
    FROM grouped AS g
    JOIN read_parquet('{{lake}}/shards/*/dedup/{{model}}/assignment.parquet') AS a USING (shard, key)
),
matches AS (
    SELECT shard, key, reason,
           first_value(shard) OVER same AS first_shard,
           first_value(key) OVER same AS first_key
    FROM covered
    WINDOW same AS (PARTITION BY reason, hash ORDER BY shard, key)
)
SELECT first_shard AS a_shard, first_key AS a_key, shard AS b_shard, key AS b_key, reason
FROM matches
WHERE shard <> first_shard OR key <> first_key;
