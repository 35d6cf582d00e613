-- The scored pool with its ground truth: one row per embedded sample, its scores, its
-- duplicate flag and its planted defect (null = clean). `truth` is the ground-truth
-- table registered by the caller.
SELECT
    s.key,
    s.shard,
    t.defect,
    s.similarity,
    s.punsafe,
    s.pwatermark,
    s.toxicity,
    s.flagged_terms,
    s.language,
    s.language_score,
    s.caption_words,
    s.caption_chars,
    s.min_side,
    s.aspect_ratio,
    d.is_duplicate
FROM scores AS s
JOIN truth AS t USING (shard, key)
LEFT JOIN duplicates AS d USING (shard, key)
ORDER BY s.shard, s.key;
