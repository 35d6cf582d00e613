-- audit_sides: the scored pool ("before") and one policy's members ("after"), one row
-- per sample, tagged with its side, its duplicate flag and its weight: how many times it
-- is in that side's training data (1 before; the times it was drawn after, 1 for a filter
-- policy). getvariable('policy') names the policy.
-- The pool is read once per query, not once per side: each pool row is paired with the
-- two side names and kept for "after" when it is a member (a streaming cross join with
-- two constant rows; nothing is materialized, so it scales with the pool).
CREATE OR REPLACE TEMP VIEW audit_sides AS
WITH members AS (
    SELECT shard, key, draws
    FROM subset_members
    WHERE policy = getvariable('policy')
),
pool AS (
    SELECT
        s.*,
        coalesce(d.is_duplicate, false) AS is_duplicate,
        m.draws
    FROM scores AS s
    LEFT JOIN duplicates AS d USING (shard, key)
    LEFT JOIN members AS m USING (shard, key)
)
SELECT
    sides.side,
    CASE sides.side WHEN 'before' THEN 1 ELSE pool.draws END AS weight,
    pool.* EXCLUDE (draws)
FROM pool
CROSS JOIN (VALUES ('before'), ('after')) AS sides(side)
WHERE sides.side = 'before' OR pool.draws IS NOT NULL;
