-- metaclip_balanced: MetaCLIP's balancing (Xu et al., 2023, "Demystifying CLIP Data").
-- Count each metadata entry's matches over the pool; keep each (sample, entry) match
-- with probability t / max(count, t); keep a sample if any of its matches is drawn.
-- Samples that match no entry are dropped. Entries with count <= t ("tail") keep all
-- their samples; "head" entries keep about t each. t = 20,000 for a 400M-pair pool;
-- scale it with the pool (the demo calibration uses 40 for the 2,000-row sample crawl).
-- Draws are a hash of (seed, key, entry): the same seed always gives the same subset.
SET VARIABLE t = 20000;
SET VARIABLE seed = 0;

WITH matches AS (
    SELECT key, shard, unnest(concept_ids) AS entry
    FROM scores
),
entry_counts AS (
    SELECT entry, count(*) AS matches
    FROM matches
    GROUP BY entry
),
draws AS (
    SELECT
        m.key,
        m.shard,
        getvariable('t') / greatest(c.matches, getvariable('t')) AS keep_probability,
        hash(getvariable('seed'), m.key, m.entry) / 18446744073709551616.0 AS draw
    FROM matches AS m
    JOIN entry_counts AS c USING (entry)
)
SELECT DISTINCT key, shard
FROM draws
WHERE draw < keep_probability;
