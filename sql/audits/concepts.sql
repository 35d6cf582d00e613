-- MetaCLIP entry match counts per side (one row per side and matched entry).
SELECT side, entry, count(*) AS matches
FROM (SELECT side, unnest(concept_ids) AS entry FROM audit_sides)
GROUP BY side, entry
ORDER BY side DESC, matches DESC;
