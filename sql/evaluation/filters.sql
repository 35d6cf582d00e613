-- Each filter measured against the ground truth, over `evaluation_pool` (pool.sql):
-- AUROC of its badness score for the defects it targets (`filter_defects`: filter, defect,
-- registered by the caller), and precision, recall and false-positive rates of the samples
-- it flags at the threshold the policies use ($parameters: null for a policy not loaded).
-- A missing or NaN score counts as 0. `head_scores` (filter, shard, key, value, threshold,
-- registered by the caller) adds a filter per kind of NSFW and watermark head.
WITH pool AS (
    SELECT
        shard,
        key,
        defect,
        CASE WHEN isnan(similarity) THEN 0 ELSE coalesce(similarity, 0) END AS similarity,
        CASE WHEN isnan(punsafe) THEN 0 ELSE coalesce(punsafe, 0) END AS punsafe,
        CASE WHEN isnan(pwatermark) THEN 0 ELSE coalesce(pwatermark, 0) END AS pwatermark,
        CASE WHEN isnan(toxicity) THEN 0 ELSE coalesce(toxicity, 0) END AS toxicity,
        coalesce(language = $language, false) AS in_language,
        CASE WHEN isnan(language_score) THEN 0 ELSE coalesce(language_score, 0) END AS language_score,
        coalesce(caption_words, 0) AS caption_words,
        coalesce(min_side, 0) AS min_side,
        CASE WHEN isnan(aspect_ratio) THEN 0 ELSE coalesce(aspect_ratio, 0) END AS aspect_ratio,
        coalesce(is_duplicate, false) AS is_duplicate
    FROM evaluation_pool
),
-- badness: higher = more likely the defect; flagged: the policy drops it.
filter_scores AS (
    SELECT 'clip_similarity' AS filter, shard, key, defect, -similarity AS badness,
           similarity < $min_similarity AS flagged FROM pool
    UNION ALL
    SELECT 'nsfw', shard, key, defect, punsafe, punsafe >= $max_punsafe FROM pool
    UNION ALL
    SELECT 'watermark', shard, key, defect, pwatermark, pwatermark >= $max_pwatermark FROM pool
    UNION ALL
    SELECT 'toxicity', shard, key, defect, toxicity, toxicity >= $max_toxicity FROM pool
    UNION ALL
    SELECT 'language', shard, key, defect, 1 - CASE WHEN in_language THEN language_score ELSE 0 END,
           NOT in_language FROM pool
    UNION ALL
    SELECT 'caption_words', shard, key, defect, -caption_words, caption_words < $min_words FROM pool
    UNION ALL
    SELECT 'min_side', shard, key, defect, -min_side, min_side < $min_side FROM pool
    UNION ALL
    SELECT 'aspect_ratio', shard, key, defect, aspect_ratio, aspect_ratio > $max_aspect_ratio FROM pool
    UNION ALL
    SELECT 'near_duplicates', shard, key, defect, is_duplicate::DOUBLE, is_duplicate FROM pool
    UNION ALL
    SELECT h.filter, h.shard, h.key, p.defect, h.value, h.value >= h.threshold
    FROM head_scores AS h
    JOIN pool AS p USING (shard, key)
),
labelled AS (
    SELECT
        s.filter,
        s.badness,
        s.flagged,
        s.defect IS NULL AS clean,
        s.defect IS NOT NULL AND s.defect IN (
            SELECT d.defect FROM filter_defects AS d WHERE d.filter = s.filter
        ) AS positive
    FROM filter_scores AS s
),
-- Mann-Whitney U: a sample's rank among its filter's badness scores, ties sharing the mean rank.
ranked AS (
    SELECT
        *,
        rank() OVER (PARTITION BY filter ORDER BY badness)
            + (count(*) OVER (PARTITION BY filter, badness) - 1) / 2.0 AS mean_rank
    FROM labelled
),
counts AS (
    SELECT
        filter,
        count(*) AS samples,
        count(*) FILTER (positive) AS positives,
        count(*) FILTER (NOT positive) AS negatives,
        count(*) FILTER (clean) AS cleans,
        count(*) FILTER (flagged) AS flagged,
        count(*) FILTER (flagged AND positive) AS true_positives,
        count(*) FILTER (flagged AND NOT positive) AS false_positives,
        count(*) FILTER (flagged AND clean) AS clean_flagged,
        sum(mean_rank) FILTER (positive) AS positive_rank_sum
    FROM ranked
    GROUP BY filter
)
SELECT
    filter,
    samples,
    CASE WHEN samples > 0 THEN positives / samples ELSE 0.0 END AS prevalence,
    CASE WHEN positives > 0 AND negatives > 0
        THEN (positive_rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)
    END AS auroc,
    CASE WHEN flagged > 0 THEN true_positives / flagged END AS precision,
    CASE WHEN positives > 0 THEN true_positives / positives END AS recall,
    false_positives / greatest(1, negatives) AS fpr,
    clean_flagged / greatest(1, cleans) AS fpr_clean
FROM counts
ORDER BY filter;
