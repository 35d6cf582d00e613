-- embeddings_index: where each embedded sample's vectors are: row `row` of
-- shards/<shard>/embeddings/<model>/{img_emb,text_emb}.npy.
CREATE OR REPLACE VIEW embeddings_index AS
SELECT key, shard, row
FROM read_parquet('{{lake}}/shards/*/embeddings/{{model}}/keys.parquet');
