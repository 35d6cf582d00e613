-- duplicates: the near_duplicates asset's groups, one row per embedded sample.
-- is_duplicate is true for every member of a group but its keeper (the first sample in
-- (shard, key) order); duplicate_of names the keeper.
CREATE OR REPLACE VIEW duplicates AS
SELECT key, shard, cluster, is_duplicate, duplicate_of, duplicate_reason, group_size
FROM read_parquet('{{lake}}/dedup/{{model}}/clusters.parquet');
