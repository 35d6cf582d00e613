-- Exact and perceptual-hash matches among the near-duplicate step's samples: each sample
-- with the first sample (in shard, key order) that has the same sha256 (reason 'exact') or
-- the same phash (reason 'phash'). `dedup_shards` (registered by the step) lists the shards.
WITH pool AS (
    SELECT h.shard, h.key, h.sha256, h.phash
    FROM read_parquet('{{lake}}/shards/*/scores/image_hashes.parquet') AS h
    JOIN read_parquet('{{lake}}/shards/*/dedup/{{model}}/assignment.parquet') AS a USING (shard, key)
    WHERE h.shard IN (SELECT shard FROM dedup_shards)
),
by_sha256 AS (
    SELECT shard, key, 'exact' AS reason,
           first_value(shard) OVER same AS first_shard,
           first_value(key) OVER same AS first_key
    FROM pool
    WHERE sha256 IS NOT NULL
    WINDOW same AS (PARTITION BY sha256 ORDER BY shard, key)
),
by_phash AS (
    SELECT shard, key, 'phash' AS reason,
           first_value(shard) OVER same AS first_shard,
           first_value(key) OVER same AS first_key
    FROM pool
    WHERE phash IS NOT NULL
    WINDOW same AS (PARTITION BY phash ORDER BY shard, key)
),
matches AS (
    SELECT * FROM by_sha256
    UNION ALL
    SELECT * FROM by_phash
)
SELECT first_shard AS a_shard, first_key AS a_key, shard AS b_shard, key AS b_key, reason
FROM matches
WHERE shard <> first_shard OR key <> first_key;
