-- Per policy and defect class ('clean' for none): rows in the crawl, rows kept.
-- Every crawl row counts, failed downloads and corrupt images included.
WITH classes AS (
    SELECT shard, key, coalesce(defect, 'clean') AS defect FROM truth
),
totals AS (
    SELECT defect, count(*) AS crawl_rows FROM classes GROUP BY defect
),
kept AS (
    SELECT m.policy, c.defect, count(*) AS kept
    FROM subset_members AS m
    JOIN classes AS c USING (shard, key)
    GROUP BY m.policy, c.defect
),
policies AS (
    SELECT DISTINCT policy FROM subset_members
)
SELECT p.policy, t.defect, t.crawl_rows, coalesce(k.kept, 0) AS kept
FROM policies AS p
CROSS JOIN totals AS t
LEFT JOIN kept AS k ON k.policy = p.policy AND k.defect = t.defect
ORDER BY p.policy, t.defect;
