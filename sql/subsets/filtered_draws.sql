-- policy_draws, on this connection only: a filter policy's members (`policy_result`,
-- registered by the caller), each once however often the policy returned it.
CREATE OR REPLACE TEMP VIEW policy_draws AS
SELECT DISTINCT key, shard, 1::BIGINT AS draws
FROM policy_result;
