-- The policies whose subset holds the sample, and how many times each drew it (1 for a
-- filter policy).
SELECT policy, draws FROM subset_members WHERE key = $key ORDER BY policy;
