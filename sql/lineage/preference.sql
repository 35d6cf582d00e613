-- One image's candidate captions, best first, with what became of each: chosen or rejected in
-- which pairs, or the rule that left it out (preference_dropped).
SELECT
    c.candidate,
    c.sources,
    c.tokens,
    c.similarity,
    coalesce(d.reason, CASE WHEN c.candidate IN (SELECT chosen FROM preference_pairs WHERE key = $key AND shard = $shard)
                            THEN 'chosen' WHEN c.candidate IN (SELECT rejected FROM preference_pairs
                                                                 WHERE key = $key AND shard = $shard)
                            THEN 'rejected' END) AS outcome,
    d.detail
FROM caption_candidates AS c
LEFT JOIN preference_dropped AS d ON d.key = c.key AND d.shard = c.shard AND d.candidate = c.candidate
WHERE c.key = $key AND c.shard = $shard
ORDER BY c.similarity DESC NULLS LAST, c.candidate_id;
