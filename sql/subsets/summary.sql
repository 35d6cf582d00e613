-- What a candidate subset (`candidate`, registered by the caller) is, without reading it
-- into Python: members and draws per shard, and sums of the md5 of every "<shard>/<key>"
-- (the lower half weighted by draws), which with the counts make the subset's version (the
-- same multiset gives the same version, whichever order a policy returned it in).
SELECT
    shard,
    count(*) AS members,
    sum(draws)::BIGINT AS draws,
    sum(md5_number_upper(shard || '/' || key))::VARCHAR AS upper_sum,
    sum(draws * md5_number_lower(shard || '/' || key))::VARCHAR AS lower_sum
FROM candidate
GROUP BY shard
ORDER BY shard;
