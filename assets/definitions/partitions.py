"""Partitions: one dynamic partition per crawl shard (its file stem, e.g. "00000").

A backfill of many shards runs them in batches (one run per batch, the model loaded once
per run) rather than one run per shard: the daemon launches about a run a second.
"""

import warnings
from collections.abc import Callable

from dagster import (
    AssetExecutionContext,
    BackfillPolicy,
    BetaWarning,
    DynamicPartitionsDefinition,
    MaterializeResult,
)

from resources.lake import LakeResource, pool_shards

# backfill_policy on @asset and observable_source_asset are beta; we rely on them knowingly.
warnings.filterwarnings("ignore", category=BetaWarning, message=".*backfill_policy.*")
warnings.filterwarnings("ignore", category=BetaWarning, message=".*(observable_source_asset|DataVersionsByPartition).*")

shard_partitions = DynamicPartitionsDefinition(name="shards")
DEFAULT_SHARDS_PER_RUN = 16


def shard_batches(shards_per_run: int = DEFAULT_SHARDS_PER_RUN) -> BackfillPolicy:
    """The per-shard assets' backfill policy: up to `shards_per_run` shards in one run."""
    return BackfillPolicy.multi_run(max_partitions_per_run=shards_per_run)


def for_each_shard(context: AssetExecutionContext, compute: Callable[[str], dict]) -> MaterializeResult:
    """Run `compute(shard)` for every shard of the run; each shard's materialization gets
    the metadata its own call returned.

    A run covers one shard, or a range of them (a backfill under the assets' BackfillPolicy, or
    `clipsieve materialize` batching shards that need the same work); either way each
    partition's record reads as if it had run alone.
    """
    shards = context.partition_keys
    if len(shards) == 1:
        return MaterializeResult(metadata=compute(shards[0]))
    for shard in shards:
        context.add_asset_metadata(compute(shard), partition_key=shard)
    return MaterializeResult(metadata={"shards_in_run": len(shards)})


def scored_pool(context: AssetExecutionContext, lake: LakeResource, model_id: str) -> list[str]:
    """The scored pool's shards; those left out are logged (the registered partitions name
    shards with no output at all, a failed `samples`)."""
    complete, left_out = pool_shards(lake, model_id, context.instance.get_dynamic_partitions(shard_partitions.name))
    for shard, reason in left_out.items():
        context.log.warning(f"{context.asset_key.to_user_string()} leaves out shard {shard}: {reason}")
    return complete
