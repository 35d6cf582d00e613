-- evaluation_pool: the scored pool with its ground truth, one row per embedded sample: its
-- scores, its duplicate flag and its planted defect (null = clean). `truth` is the
-- ground-truth file registered by the caller.
CREATE OR REPLACE TEMP VIEW evaluation_pool AS
SELECT
    s.key,
    s.shard,
    t.defect,
    s.similarity,
    s.punsafe,
    s.pwatermark,
    s.toxicity,
    s.language,
    s.language_score,
    s.caption_words,
    s.min_side,
    s.aspect_ratio,
    d.is_duplicate
FROM scores AS s
JOIN truth AS t USING (shard, key)
LEFT JOIN duplicates AS d USING (shard, key);
