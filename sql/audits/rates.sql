-- Rates per stage. Thresholds are LAION's recommended cut-offs (FIELD.md):
-- punsafe > 0.5 (and the stricter > 0.9), pwatermark > 0.8.
-- A duplicate is any copy after the first: 1 - distinct / count.
SELECT
    stage,
    count(*) AS samples,
    avg((punsafe > 0.5)::INTEGER) AS nsfw_rate,
    avg((punsafe > 0.9)::INTEGER) AS nsfw_rate_p90,
    avg((pwatermark > 0.8)::INTEGER) AS watermark_rate,
    1 - count(DISTINCT sha256) / count(*) AS exact_duplicate_rate,
    1 - count(DISTINCT phash) / count(*) AS phash_duplicate_rate,
    avg((language = 'en')::INTEGER) AS english_rate,
    avg(similarity) AS mean_similarity
FROM audit_stages
GROUP BY stage
ORDER BY stage DESC;
