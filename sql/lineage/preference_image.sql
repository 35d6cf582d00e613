-- Why an image made no preference pairs (a rule that stopped the whole image), and its pairs.
SELECT 'dropped' AS kind, NULL::INTEGER AS pair, NULL AS chosen, NULL AS rejected, NULL::FLOAT AS margin,
       reason, detail
FROM preference_dropped
WHERE key = $key AND shard = $shard AND candidate IS NULL
UNION ALL
SELECT 'pair' AS kind, pair, chosen, rejected, margin, NULL AS reason, NULL AS detail
FROM preference_pairs
WHERE key = $key AND shard = $shard
ORDER BY kind, pair;
