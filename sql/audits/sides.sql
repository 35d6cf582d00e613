-- audit_sides: the scored pool ("before") and one policy's members ("after"), one row
-- per sample, tagged with its side and its duplicate flag. getvariable('policy') names
-- the policy.
-- The pool is read once per query, not once per side: each pool row is paired with the
-- two side names and kept for "after" when it is a member (a streaming cross join with
-- two constant rows; nothing is materialized, so it scales with the pool).
CREATE OR REPLACE TEMP VIEW audit_sides AS
WITH pool AS (
    SELECT
        s.*,
        coalesce(d.is_duplicate, false) AS is_duplicate,
        (s.shard, s.key) IN (
            SELECT (shard, key) FROM subset_members WHERE policy = getvariable('policy')
        ) AS in_subset
    FROM scores AS s
    LEFT JOIN duplicates AS d USING (shard, key)
)
SELECT sides.side, pool.* EXCLUDE (in_subset)
FROM pool
CROSS JOIN (VALUES ('before'), ('after')) AS sides(side)
WHERE sides.side = 'before' OR pool.in_subset;
