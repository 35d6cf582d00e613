-- Rates per side. Thresholds are LAION's recommended cut-offs (LAION-5B paper):
-- punsafe > 0.5 (and the stricter > 0.9), pwatermark > 0.8; toxic = toxicity > 0.5
-- (Birhane et al. report 100 * mean(P > 0.5)). Exact duplicates: 1 - distinct sha256 /
-- count; near duplicates: the near_duplicates asset's flag.
SELECT
    side,
    count(*) AS samples,
    avg((punsafe > 0.5)::INTEGER) AS nsfw_rate,
    avg((punsafe > 0.9)::INTEGER) AS nsfw_rate_p90,
    avg((pwatermark > 0.8)::INTEGER) AS watermark_rate,
    count(*) FILTER (WHERE toxicity > 0.5) AS toxic,
    avg((toxicity > 0.5)::INTEGER) AS toxic_rate,
    1 - count(DISTINCT sha256) / count(*) AS exact_duplicate_rate,
    avg(is_duplicate::INTEGER) AS near_duplicate_rate,
    1 - count(DISTINCT phash) / count(*) AS phash_duplicate_rate,
    avg((language = 'en')::INTEGER) AS english_rate,
    avg(similarity) AS mean_similarity
FROM audit_sides
GROUP BY side
ORDER BY side DESC;
