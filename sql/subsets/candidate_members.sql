-- subset_members, on this connection only: the policy's candidate members (registered by
-- the caller as `candidate`) in place of the committed ones, so the subset's checks read
-- what would be committed before anything is. A temp view is found before the catalog's.
CREATE OR REPLACE TEMP VIEW subset_members AS
SELECT policy, key, shard, draws FROM candidate;
