-- scores: one row per embedded sample, one column per score, named as LAION and
-- DataComp name them (similarity, punsafe, pwatermark, language, ...). The filter table
-- in docs/curation.md says what each column means.
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
    aes.aesthetic,
    txt.ptext,
    lang.language,
    lang.language_score,
    q.caption_words,
    q.caption_chars,
    q.width,
    q.height,
    q.min_side,
    q.aspect_ratio,
    h.sha256,
    h.phash,
    tox.toxicity,
    tox.flagged_terms,
    c.concept_ids,
    c.concept_count,
    c.caption_group
FROM embeddings_index AS e
-- Only the usable row of a key: samples also holds a crawl's duplicate-key rows and tar-only rows.
JOIN (SELECT * FROM samples WHERE image_status = 'ok') AS s USING (shard, key)
LEFT JOIN read_parquet('{{lake}}/shards/*/scores/{{model}}/clip_similarity.parquet') AS sim USING (shard, key)
LEFT JOIN read_parquet('{{lake}}/shards/*/scores/{{model}}/nsfw.parquet') AS nsfw USING (shard, key)
LEFT JOIN read_parquet('{{lake}}/shards/*/scores/{{model}}/watermark.parquet') AS wm USING (shard, key)
LEFT JOIN read_parquet('{{lake}}/shards/*/scores/{{model}}/aesthetic.parquet') AS aes USING (shard, key)
LEFT JOIN read_parquet('{{lake}}/shards/*/scores/{{model}}/text_in_image.parquet') AS txt USING (shard, key)
LEFT JOIN read_parquet('{{lake}}/shards/*/scores/language.parquet') AS lang USING (shard, key)
LEFT JOIN read_parquet('{{lake}}/shards/*/scores/quality.parquet') AS q USING (shard, key)
LEFT JOIN read_parquet('{{lake}}/shards/*/scores/image_hashes.parquet') AS h USING (shard, key)
LEFT JOIN read_parquet('{{lake}}/shards/*/scores/toxicity.parquet') AS tox USING (shard, key)
LEFT JOIN read_parquet('{{lake}}/shards/*/scores/caption_terms.parquet') AS c USING (shard, key);
