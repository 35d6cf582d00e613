-- embeddings_index: where each embedded sample's vectors are: row `row` of its shard's
-- embeddings (shards/<shard>/embeddings/<model>/keys.parquet commits them). Only shards in
-- `pool_shards` (registered by resources/catalog.py: the shards with every per-shard
-- output) are in it, and through it in `scores`: a shard whose per-shard step failed is left
-- out of every cross-shard asset, not half in.
CREATE OR REPLACE VIEW embeddings_index AS
SELECT key, shard, row
FROM read_parquet('{{lake}}/shards/*/embeddings/{{model}}/keys.parquet')
WHERE shard IN (SELECT shard FROM pool_shards);
