-- Distribution quantiles per side: caption length (characters) and CLIP similarity.
SELECT
    side,
    quantile_cont(caption_chars, [0.1, 0.25, 0.5, 0.75, 0.9]) AS caption_chars,
    quantile_cont(similarity, [0.1, 0.25, 0.5, 0.75, 0.9]) AS similarity
FROM audit_sides
GROUP BY side
ORDER BY side DESC;
