-- Rates per side. Thresholds are LAION's recommended cut-offs (LAION-5B paper):
-- punsafe > 0.5 (and the stricter > 0.9), pwatermark > 0.8; toxic = toxicity > 0.5
-- (Birhane et al. report 100 * mean(P > 0.5)). Exact duplicates: 1 - distinct sha256 /
-- count; near duplicates: the near_duplicates asset's flag.
-- A rate about training data counts a member as often as it was drawn (`weight`; the
-- same as counting it once for a filter policy); the duplicate rates of sha256 and phash
-- count distinct members, since drawing a member again is not a duplicate in the crawl.
SELECT
    side,
    count(*) AS samples,
    sum(weight)::BIGINT AS draws,
    weighted_avg((punsafe > 0.5)::INTEGER, weight) AS nsfw_rate,
    weighted_avg((punsafe > 0.9)::INTEGER, weight) AS nsfw_rate_p90,
    weighted_avg((pwatermark > 0.8)::INTEGER, weight) AS watermark_rate,
    coalesce(sum(weight) FILTER (WHERE toxicity > 0.5), 0)::BIGINT AS toxic,
    weighted_avg((toxicity > 0.5)::INTEGER, weight) AS toxic_rate,
    1 - count(DISTINCT sha256) / count(*) AS exact_duplicate_rate,
    weighted_avg(is_duplicate::INTEGER, weight) AS near_duplicate_rate,
    1 - count(DISTINCT phash) / count(*) AS phash_duplicate_rate,
    weighted_avg((language = 'en')::INTEGER, weight) AS english_rate,
    weighted_avg(similarity, weight) AS mean_similarity
FROM audit_sides
GROUP BY side
ORDER BY side DESC;
