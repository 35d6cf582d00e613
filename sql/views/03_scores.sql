-- scores: one row per embedded sample, one column per score, named as LAION and
-- DataComp name them (similarity, punsafe, pwatermark, language, ...).
CREATE OR REPLACE VIEW scores AS
SELECT
    e.key,
    e.shard,
    s.url,
    s.caption,
    s.uid,
    sim.similarity,
    nsfw.punsafe,
    wm.pwatermark,
    lang.language,
    lang.language_score,
    q.caption_words,
    q.caption_chars,
    q.width,
    q.height,
    q.min_side,
    q.aspect_ratio,
    h.sha256,
    h.phash
FROM embeddings_index AS e
JOIN samples AS s USING (shard, key)
LEFT JOIN read_parquet('{{lake}}/shards/*/scores/{{model}}/clip_similarity.parquet') AS sim USING (shard, key)
LEFT JOIN read_parquet('{{lake}}/shards/*/scores/{{model}}/nsfw.parquet') AS nsfw USING (shard, key)
LEFT JOIN read_parquet('{{lake}}/shards/*/scores/{{model}}/watermark.parquet') AS wm USING (shard, key)
LEFT JOIN read_parquet('{{lake}}/shards/*/scores/language.parquet') AS lang USING (shard, key)
LEFT JOIN read_parquet('{{lake}}/shards/*/scores/quality.parquet') AS q USING (shard, key)
LEFT JOIN read_parquet('{{lake}}/shards/*/scores/exact_hash.parquet') AS h USING (shard, key);
