-- Samples per stage and caption group.
SELECT stage, group_name, count(*) AS samples
FROM audit_sample_groups
GROUP BY stage, group_name
ORDER BY stage DESC, group_name;
