"""Asset definitions: the Dagster wiring of each stage (decorators, resources, metadata,
checks) over the plain modules of assets/ that compute it. The computing modules import no
Dagster; tests call them directly.

Done so far for the per-shard stages (samples, embeddings, scores); the cross-shard stages
still declare their assets beside their computing.
"""
