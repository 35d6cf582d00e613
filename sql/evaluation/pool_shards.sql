-- The shards of the evaluated pool (evaluation_pool, pool.sql), in order.
SELECT DISTINCT shard FROM evaluation_pool ORDER BY shard;
