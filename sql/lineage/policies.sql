-- The policies with a materialized subset.
SELECT DISTINCT policy FROM subset_members ORDER BY policy;
