-- Keys a policy returned that are not in the scored pool (`policy_result` is registered
-- by the caller); a policy returning any fails.
SELECT count(*) AS strays
FROM policy_result AS r
ANTI JOIN scores AS s USING (shard, key);
