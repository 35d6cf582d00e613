-- A subset's members with every score, the duplicate flags and the times each was drawn
-- ($policy names it).
SELECT s.*, m.draws, d.is_duplicate, d.duplicate_of
FROM subset_members AS m
JOIN scores AS s USING (shard, key)
LEFT JOIN duplicates AS d USING (shard, key)
WHERE m.policy = $policy
ORDER BY s.shard, s.key;
