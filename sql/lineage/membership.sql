-- The policies whose subset holds the sample.
SELECT policy FROM subset_members WHERE key = $key ORDER BY policy;
