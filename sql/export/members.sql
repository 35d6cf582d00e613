-- A subset's members with every score and the duplicate flags ($policy names it).
SELECT s.*, d.is_duplicate, d.duplicate_of
FROM subset_members AS m
JOIN scores AS s USING (shard, key)
LEFT JOIN duplicates AS d USING (shard, key)
WHERE m.policy = $policy
ORDER BY s.shard, s.key;
