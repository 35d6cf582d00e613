-- subset_members: which samples each materialized policy keeps.
CREATE OR REPLACE VIEW subset_members AS
SELECT policy, key, shard
FROM read_parquet('{{lake}}/subsets/*/members.parquet', union_by_name = true);
