-- mflyt_scores: the M-FLYT mix's score of each embedded pair (scores/mflyt, once flyt_mix
-- has run: `clipsieve materialize --flyt`); a policy that reads this view is in the flyt group.
CREATE OR REPLACE VIEW mflyt_scores AS
SELECT key, shard, mflyt
FROM read_parquet('{{lake}}/shards/*/scores/{{model}}/mflyt.parquet')
WHERE shard IN (SELECT shard FROM pool_shards);
