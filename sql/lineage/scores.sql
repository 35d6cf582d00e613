-- One sample's scores and duplicate flags, if it was scored.
SELECT s.*, d.is_duplicate, d.duplicate_of, d.duplicate_reason
FROM scores AS s
LEFT JOIN duplicates AS d USING (shard, key)
WHERE s.key = $key;
