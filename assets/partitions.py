"""Partitions: one dynamic partition per crawl shard (its file stem, e.g. "00000").

A backfill of many shards runs them in batches (one run per batch, the model loaded once
per run) rather than one run per shard: the daemon launches about a run a second.
"""

import warnings

from dagster import BackfillPolicy, BetaWarning, DynamicPartitionsDefinition

# backfill_policy on @asset and observable_source_asset are beta; we rely on them knowingly.
warnings.filterwarnings("ignore", category=BetaWarning, message=".*backfill_policy.*")
warnings.filterwarnings("ignore", category=BetaWarning, message=".*(observable_source_asset|DataVersionsByPartition).*")

shard_partitions = DynamicPartitionsDefinition(name="shards")
DEFAULT_SHARDS_PER_RUN = 16


def shard_batches(shards_per_run: int = DEFAULT_SHARDS_PER_RUN) -> BackfillPolicy:
    """The per-shard assets' backfill policy: up to `shards_per_run` shards in one run."""
    return BackfillPolicy.multi_run(max_partitions_per_run=shards_per_run)
