-- The FLYT score against every defect class: per class, the AUROC of -flyt separating the
-- class's samples from the clean ones (1: the scorer puts every sample of the class below
-- every clean one; 0.5: it cannot tell them apart), and the class's mean score beside the
-- clean samples'. Over `evaluation_pool` (pool.sql) and the flyt_scores view.
WITH pool AS (
    SELECT coalesce(p.defect, 'clean') AS defect, -f.flyt AS badness
    FROM evaluation_pool AS p
    JOIN flyt_scores AS f USING (shard, key)
    WHERE NOT isnan(f.flyt)
),
classes AS (
    SELECT DISTINCT defect FROM pool WHERE defect <> 'clean'
),
-- Each class's samples (positive) with the clean ones.
pairs AS (
    SELECT c.defect AS class, p.defect = c.defect AS positive, p.badness
    FROM classes AS c
    JOIN pool AS p ON p.defect = c.defect OR p.defect = 'clean'
),
-- Mann-Whitney U: a sample's rank in its class's pairs, ties sharing the mean rank.
ranked AS (
    SELECT
        *,
        rank() OVER (PARTITION BY class ORDER BY badness)
            + (count(*) OVER (PARTITION BY class, badness) - 1) / 2.0 AS mean_rank
    FROM pairs
),
counts AS (
    SELECT
        class,
        count(*) FILTER (positive) AS positives,
        count(*) FILTER (NOT positive) AS negatives,
        sum(mean_rank) FILTER (positive) AS positive_rank_sum,
        avg(-badness) FILTER (positive) AS mean_score,
        avg(-badness) FILTER (NOT positive) AS clean_mean_score
    FROM ranked
    GROUP BY class
)
SELECT
    class AS defect,
    positives AS samples,
    mean_score,
    clean_mean_score,
    CASE WHEN positives > 0 AND negatives > 0
        THEN (positive_rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)
    END AS auroc
FROM counts
ORDER BY defect;
