-- What a candidate subset (`candidate`, registered by the caller) is, without reading it
-- into Python: members per shard, and sums of the md5 of every "<shard>/<key>", which
-- with the count make the subset's version (the same members give the same version,
-- whichever order a policy returned them in).
SELECT
    shard,
    count(*) AS members,
    sum(md5_number_upper(shard || '/' || key))::VARCHAR AS upper_sum,
    sum(md5_number_lower(shard || '/' || key))::VARCHAR AS lower_sum
FROM candidate
GROUP BY shard
ORDER BY shard;
