"""Asset definitions: the Dagster side of each stage (decorators, resources, metadata,
checks, partitions) over the plain modules of assets/ that compute it. The computing
modules import no Dagster; tests call them directly.

Here: the shard partitions and their batching (partitions.py), the observable crawl shard
(crawl_shard.py), one module per stage's assets (samples, embeddings, scores,
near_duplicates, subsets, indices, audits, evaluation), the asset checks' bounds and specs
(checks.py), the policy assets' keys (policy_keys.py) and Dagster's table metadata
(table_metadata.py).
"""
