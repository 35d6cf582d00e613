-- duplicates: the near_duplicates asset's groups, one row per embedded sample of the shards
-- it covered (shards/<shard>/dedup/<model>/duplicates.parquet). is_duplicate is true for
-- every member of a group but the one it keeps (by default the first in (shard, key)
-- order); duplicate_of names the kept sample.
CREATE OR REPLACE VIEW duplicates AS
SELECT key, shard, cluster, is_duplicate, duplicate_of, duplicate_reason, group_size
FROM read_parquet('{{lake}}/shards/*/dedup/{{model}}/duplicates.parquet')
WHERE shard IN (SELECT shard FROM pool_shards);
