"""The crawl sensor: new complete shards become partitions and get their per-shard run,
and a shard rewritten under the same name (its files' size or mtime changed) is run again.

A shard counts once its tar, parquet and stats file are all present; img2dataset writes
the stats file last, so a shard still being written is not picked up. The cursor keeps
each shard's fingerprint.
"""

import json

from dagster import (
    DefaultSensorStatus,
    JobDefinition,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from orchestration.partitions import shard_partitions
from resources.crawl import CrawlResource
from resources.safe_paths import split_shard_names


def new_shards(crawl: CrawlResource, known: set[str]) -> list[str]:
    """Complete shards of the crawl that are not partitions yet (safe names only)."""
    return [shard for shard in split_shard_names(crawl.shards())[0] if shard not in known]


def build_crawl_sensor(job: JobDefinition) -> SensorDefinition:
    """The sensor, requesting runs of `job` (an asset job over the per-shard assets)."""
    @sensor(
        name="crawl_sensor",
        job=job,
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.STOPPED,
        description="Registers each new complete crawl shard as a partition and runs its per-shard assets.",
    )
    def crawl_sensor(context: SensorEvaluationContext, crawl: CrawlResource) -> SensorResult:
        known = set(context.instance.get_dynamic_partitions(shard_partitions.name))
        shards, unsafe = split_shard_names(crawl.shards())
        if unsafe:  # a crawl file named e.g. "...tar" would make the shard "..": never a partition
            context.log.warning(f"skipping crawl shards with unsafe names: {unsafe[:10]}")
        fresh = [shard for shard in shards if shard not in known]
        seen = json.loads(context.cursor) if context.cursor else {}
        current = {shard: crawl.fingerprint(shard) for shard in shards}
        changed = [s for s in current if s in known and seen.get(s) not in (None, current[s])]
        return SensorResult(
            run_requests=[RunRequest(partition_key=shard, run_key=f"shard-{shard}-{current[shard]}")
                          for shard in fresh + changed],
            dynamic_partitions_requests=[shard_partitions.build_add_request(fresh)] if fresh else [],
            cursor=json.dumps(current, sort_keys=True),
        )

    return crawl_sensor
