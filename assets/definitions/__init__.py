"""Asset definitions: the Dagster side of each stage (decorators, resources, metadata,
checks, partitions) over the plain modules of assets/ that compute it. The computing
modules import no Dagster; tests call them directly.

Here: the shard partitions and their batching (partitions.py), the observable crawl shard
(crawl_shard.py), the per-shard stages' assets (samples.py, embeddings.py, scores.py), the
asset checks' bounds and specs (checks.py), the policy assets' keys (policy_keys.py) and
Dagster's table metadata (table_metadata.py). The cross-shard stages (near_duplicates,
subsets, indices, audits, evaluation) still declare their assets beside their computing.
"""
