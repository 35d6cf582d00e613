-- A shard's preference pairs: per image that passed every rule (verdicts.reason null), its
-- chosen caption against each rejected one at least min_margin below it. best_vs_rest: the
-- chosen is the image's best caption; all_qualifying: any caption may be chosen over a worse
-- one. At most max_pairs per image: best chosen first, then the largest margin.
WITH pairs AS (
    SELECT
        c.key,
        c.shard,
        c.candidate_id AS chosen_id,
        r.candidate_id AS rejected_id,
        c.candidate AS chosen,
        r.candidate AS rejected,
        c.sources AS chosen_sources,
        r.sources AS rejected_sources,
        c.similarity AS chosen_similarity,
        r.similarity AS rejected_similarity,
        c.similarity - r.similarity AS margin,
        c.rank AS chosen_rank,
        v.ptext
    FROM ranked AS c
    JOIN ranked AS r ON r.key = c.key AND r.rank > c.rank
    JOIN verdicts AS v ON v.key = c.key AND v.reason IS NULL
    WHERE c.similarity - r.similarity >= getvariable('min_margin')
      AND c.similarity >= getvariable('min_similarity')
      AND (c.rank = 1 OR getvariable('pairing') = 'all_qualifying')
)
SELECT
    key,
    shard,
    row_number() OVER (PARTITION BY key ORDER BY chosen_rank, margin DESC, rejected_id)::INTEGER AS pair,
    chosen,
    rejected,
    chosen_similarity,
    rejected_similarity,
    margin::FLOAT AS margin,
    chosen_sources,
    rejected_sources,
    chosen_id,
    rejected_id,
    ptext
FROM pairs
QUALIFY pair <= getvariable('max_pairs')
ORDER BY key, pair;
