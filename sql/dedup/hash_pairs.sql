-- Exact and perceptual-hash matches among the near-duplicate step's samples: each sample
-- with the first sample (in shard, key order) that has the same sha256 (reason 'exact') or
-- the same phash (reason 'phash'). `dedup_shards` (registered by the step) lists the shards.
WITH pool AS (
    SELECT h.shard, h.key, h.sha256, h.phash
    FROM read_parquet('{{lake}}/shards/*/scores/image_hashes.parquet') AS h
    JOIN read_parquet('{{lake}}/shards/*/dedup/{{model}}/assignment.parquet') AS a USING (shard, key)
    WHERE h.shard IN (SELECT shard FROM dedup_shards)
),
hashes AS (
    SELECT shard, key, 'exact' AS reason, sha256 AS hash FROM pool WHERE sha256 IS NOT NULL
    UNION ALL
    SELECT shard, key, 'phash' AS reason, phash::VARCHAR AS hash FROM pool WHERE phash IS NOT NULL
),
matches AS (
    SELECT shard, key, reason,
           first_value(shard) OVER same AS first_shard,
           first_value(key) OVER same AS first_key
    FROM hashes
    WINDOW same AS (PARTITION BY reason, hash ORDER BY shard, key)
)
SELECT first_shard AS a_shard, first_key AS a_key, shard AS b_shard, key AS b_key, reason
FROM matches
WHERE shard <> first_shard OR key <> first_key;
