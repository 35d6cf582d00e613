-- caption_candidates: every candidate caption of every embedded image (alt-text, extra crawl
-- columns, the crawl's candidates files), with its sources, token count and CLIP similarity
-- (null when over the model's token limit). Written by the caption_candidates asset.
CREATE OR REPLACE VIEW caption_candidates AS
SELECT key, shard, candidate_id, candidate, sources, tokens, over_token_limit, similarity
FROM read_parquet('{{lake}}/shards/*/preference/{{model}}/candidates.parquet')
WHERE shard IN (SELECT shard FROM pool_shards);
