-- flyt_scores: the FLYT scorer's score of each embedded pair (scores/flyt, written once the
-- flyt group is materialized: `clipsieve materialize --flyt`). Higher: the scorer weights the
-- pair up. Apart from `scores`, whose pool does not wait for a trained scorer; a policy that
-- reads this view belongs to the flyt group.
CREATE OR REPLACE VIEW flyt_scores AS
SELECT key, shard, flyt
FROM read_parquet('{{lake}}/shards/*/scores/{{model}}/flyt.parquet')
WHERE shard IN (SELECT shard FROM pool_shards);
