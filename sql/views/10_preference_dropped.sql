-- preference_dropped: what the preference pairs left out and why: an image (candidate null)
-- or one candidate, with the rule's reason and the figures behind it.
CREATE OR REPLACE VIEW preference_dropped AS
SELECT key, shard, candidate, reason, detail
FROM read_parquet('{{lake}}/shards/*/preference/{{model}}/dropped.parquet')
WHERE shard IN (SELECT shard FROM pool_shards);
