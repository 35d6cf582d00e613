-- Samples per side and caption group.
SELECT side, group_name, count(*) AS samples
FROM audit_sample_groups
GROUP BY side, group_name
ORDER BY side DESC, group_name;
