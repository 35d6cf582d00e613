-- What the keep rule and the duplicate reasons need of each sample in a duplicate group
-- (`dedup_nodes`, registered by the step: node, shard, key).
SELECT n.node, h.sha256, h.phash, a.cluster, a.centroid_similarity
FROM dedup_nodes AS n
LEFT JOIN read_parquet('{{lake}}/shards/*/scores/image_hashes.parquet') AS h USING (shard, key)
LEFT JOIN read_parquet('{{lake}}/shards/*/dedup/{{model}}/assignment.parquet') AS a USING (shard, key)
ORDER BY n.node;
