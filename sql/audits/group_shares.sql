-- Members of the subset in each caption group: the target shares of the retrieval audit.
SELECT group_name, count(*) AS members
FROM audit_sample_groups
WHERE side = 'after'
GROUP BY group_name
ORDER BY group_name;
