-- The ranking behind a shard's preference pairs (assets/preference/pairs.py registers
-- `candidates`, the shard's candidates.parquet, and `images`: key, ptext).
-- ranked: each image's candidates within the model's token limit, best first.
-- verdicts: per image, the rule that leaves it without pairs (reason), or null.
CREATE OR REPLACE TEMP TABLE ranked AS
SELECT
    c.key,
    c.shard,
    c.candidate_id,
    c.candidate,
    c.sources,
    c.similarity,
    row_number() OVER (PARTITION BY c.key ORDER BY c.similarity DESC, c.candidate_id) AS rank
FROM candidates AS c
WHERE NOT c.over_token_limit;

CREATE OR REPLACE TEMP TABLE verdicts AS
WITH per_image AS (
    SELECT
        key,
        any_value(shard) AS shard,
        count(*) AS ranked_candidates,
        max(similarity) FILTER (WHERE rank = 1) AS best,
        max(similarity) FILTER (WHERE rank = 2) AS runner_up
    FROM ranked
    GROUP BY key
),
every_image AS (
    SELECT key, any_value(shard) AS shard FROM candidates GROUP BY key
)
SELECT
    e.key,
    e.shard,
    i.ptext,
    coalesce(p.ranked_candidates, 0) AS ranked_candidates,
    p.best,
    p.runner_up,
    CASE
        WHEN i.ptext IS NULL THEN 'no_text_in_image_score'
        WHEN i.ptext > getvariable('max_ptext') THEN 'text_in_image'
        WHEN coalesce(p.ranked_candidates, 0) < 2 THEN 'fewer_than_two_candidates'
        WHEN p.best < getvariable('min_similarity') THEN 'best_below_min_similarity'
        WHEN p.best - p.runner_up < getvariable('min_lead') THEN 'best_not_ahead'
    END AS reason
FROM every_image AS e
LEFT JOIN per_image AS p USING (key)
LEFT JOIN images AS i USING (key);
