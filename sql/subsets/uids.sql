-- DataComp's subset array of a policy's members (`candidate`, registered by the caller):
-- each member's 128-bit uid as (high, low) 64-bit halves, sorted. The uid is the crawl's
-- where it is 32 hex digits, else md5 of the key; where two members would share one (the
-- same key in two merged crawls, a crawl that repeats a uid), the later in (shard, key)
-- order gets md5('<shard>/<key>') instead. A member drawn several times (a sampling
-- policy's multiset) appears as many times, as FLYT's released uid files repeat them.
WITH chosen AS (
    SELECT
        shard,
        key,
        draws,
        lower(CASE WHEN regexp_full_match(coalesce(uid, ''), '[0-9a-fA-F]{32}') THEN uid ELSE md5(key) END) AS uid
    FROM candidate
),
distinct_uids AS (
    SELECT CASE
        WHEN row_number() OVER (PARTITION BY uid ORDER BY shard, key) = 1 THEN uid
        ELSE md5(shard || '/' || key)
    END AS uid,
    draws
    FROM chosen
),
repeated AS (
    SELECT uid, unnest(range(draws)) AS draw
    FROM distinct_uids
)
SELECT
    ('0x' || substr(uid, 1, 16))::UBIGINT AS high,
    ('0x' || substr(uid, 17, 16))::UBIGINT AS low
FROM repeated
ORDER BY high, low;
