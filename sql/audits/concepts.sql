-- MetaCLIP entry match counts per stage (one row per stage and matched entry).
SELECT stage, entry, count(*) AS matches
FROM (SELECT stage, unnest(concept_ids) AS entry FROM audit_stages)
GROUP BY stage, entry
ORDER BY stage DESC, matches DESC;
