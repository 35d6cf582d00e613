-- The text-in-image score (ptext) against the ground truth's text_in_image flag (a sign or
-- a watermark in the picture), over the scored pool: AUROC (Mann-Whitney U, ties at their
-- mean rank), and recall and false-positive rate at $max_ptext, the cut the pairs use.
WITH labelled AS (
    SELECT
        CASE WHEN isnan(s.ptext) THEN 0 ELSE coalesce(s.ptext, 0) END AS ptext,
        coalesce(t.text_in_image, false) AS positive
    FROM scores AS s
    JOIN truth AS t USING (shard, key)
),
ranked AS (
    SELECT *, rank() OVER (ORDER BY ptext) + (count(*) OVER (PARTITION BY ptext) - 1) / 2.0 AS mean_rank
    FROM labelled
),
counts AS (
    SELECT
        count(*) FILTER (positive) AS positives,
        count(*) FILTER (NOT positive) AS negatives,
        count(*) FILTER (positive AND ptext > $max_ptext) AS true_positives,
        count(*) FILTER (NOT positive AND ptext > $max_ptext) AS false_positives,
        sum(mean_rank) FILTER (positive) AS positive_rank_sum
    FROM ranked
)
SELECT
    positives,
    negatives,
    (positive_rank_sum - positives * (positives + 1) / 2.0) / nullif(positives * negatives, 0) AS auroc,
    true_positives / nullif(positives, 0) AS recall,
    false_positives / nullif(negatives, 0) AS fpr
FROM counts;
