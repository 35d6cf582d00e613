-- Language shares per stage.
SELECT
    stage,
    language,
    count(*) AS samples,
    count(*) / sum(count(*)) OVER (PARTITION BY stage) AS share
FROM audit_stages
GROUP BY stage, language
ORDER BY stage DESC, samples DESC, language;
