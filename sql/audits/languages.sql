-- Language shares per side.
SELECT
    side,
    language,
    count(*) AS samples,
    count(*) / sum(count(*)) OVER (PARTITION BY side) AS share
FROM audit_sides
GROUP BY side, language
ORDER BY side DESC, samples DESC, language;
