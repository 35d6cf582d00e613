-- Up to $per_group members of each caption group for the association test: a fixed-size
-- sample, the same on every run (members ordered by the md5 of "<shard>/<key>").
SELECT shard, key, group_name
FROM (
    SELECT
        shard,
        key,
        group_name,
        row_number() OVER (PARTITION BY group_name ORDER BY md5(shard || '/' || key)) AS pick
    FROM audit_sample_groups
    WHERE side = 'after'
)
WHERE pick <= $per_group
ORDER BY group_name, shard, key;
