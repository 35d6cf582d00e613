-- subset_members: which samples each materialized policy keeps, and how many times each
-- was drawn (a sampling policy's multiset; 1 for a filter policy and for a members file
-- written before subsets had draws: the empty UNION BY NAME side supplies the column).
CREATE OR REPLACE VIEW subset_members AS
SELECT policy, key, shard, coalesce(draws, 1) AS draws
FROM (
    FROM read_parquet('{{lake}}/subsets/*/members.parquet', union_by_name = true)
    UNION ALL BY NAME
    SELECT 1::BIGINT AS draws WHERE false
);
