-- The rows of a subset's index as the search service serves them, in index order:
-- index_keys (row, key, shard) is registered by orchestration/serve/served_index.py.
-- `dedup_group` names a sample's duplicate group by the sample it keeps (itself when it is
-- in none), so results of one group can be folded into the best-ranked one.
SELECT
    k.row,
    k.key,
    k.shard,
    e.row AS embedding_row,
    t.tar_member,
    s.url,
    s.caption,
    s.uid,
    s.similarity,
    s.punsafe,
    s.pwatermark,
    s.aesthetic,
    s.toxicity,
    s.language,
    s.language_score,
    s.caption_words,
    s.min_side,
    s.aspect_ratio,
    coalesce(d.is_duplicate, false) AS is_duplicate,
    coalesce(d.duplicate_of, k.key) AS dedup_group
FROM index_keys AS k
LEFT JOIN embeddings_index AS e USING (shard, key)
LEFT JOIN scores AS s USING (shard, key)
LEFT JOIN (SELECT key, shard, tar_member FROM samples WHERE image_status = 'ok') AS t USING (shard, key)
LEFT JOIN duplicates AS d USING (shard, key)
ORDER BY k.row;
