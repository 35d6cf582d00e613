-- A policy's members, one row each, in (shard, key) order, with the DataComp uid when the
-- crawl has one. $policy names the policy; `policy_result` is registered by the caller.
SELECT DISTINCT $policy AS policy, r.key, r.shard, s.uid
FROM policy_result AS r
JOIN scores AS s USING (shard, key)
ORDER BY r.shard, r.key;
