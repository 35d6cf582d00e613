-- Whether a sample passes one clause of a policy: `clause_result` is the policy's SELECT
-- with only that clause as its WHERE, registered by the caller.
SELECT count(*) > 0 AS passes FROM clause_result WHERE key = $key AND shard = $shard;
