-- A sampling policy's candidates (`policy_result`, registered by the caller), numbered in
-- (shard, key) order: the draws are made over the scores and joined back by number. A
-- candidate the policy returned twice keeps its higher score; a missing score is never drawn.
SELECT
    row_number() OVER (ORDER BY shard, key) - 1 AS position,
    shard,
    key,
    max(score)::DOUBLE AS score
FROM policy_result
GROUP BY shard, key;
