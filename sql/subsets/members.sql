-- A policy's members, one row each, in (shard, key) order, with the DataComp uid when the
-- crawl has one and the times it was drawn (1 for a filter policy). $policy names the
-- policy; `policy_draws` is created by the caller (filtered_draws.sql, sampled_draws.sql).
SELECT DISTINCT $policy AS policy, r.key, r.shard, s.uid, r.draws
FROM policy_draws AS r
JOIN scores AS s USING (shard, key)
ORDER BY r.shard, r.key;
