"""The crawl sensor: new complete shards become partitions and get their per-shard run,
a shard rewritten under the same name (its files' size or mtime changed) is run again, and
a shard deleted from the crawl (none of its files left) leaves: its partition is removed,
its lake files move to retired/ and the cross-shard assets run without it.

A shard counts once its tar, parquet and stats file are all present; img2dataset writes
the stats file last, so a shard still being written is not picked up. The cursor keeps
each shard's fingerprint.
"""

import json

from dagster import (
    DefaultSensorStatus,
    DeleteDynamicPartitionsRequest,
    JobDefinition,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from orchestration.partitions import shard_partitions
from resources.crawl import CrawlResource
from resources.lake import LakeResource
from resources.safe_paths import split_shard_names


def new_shards(crawl: CrawlResource, known: set[str]) -> list[str]:
    """Complete shards of the crawl that are not partitions yet (safe names only)."""
    return [shard for shard in split_shard_names(crawl.shards())[0] if shard not in known]


def build_crawl_sensor(per_shard_job: JobDefinition, cross_shard_job: JobDefinition) -> SensorDefinition:
    """The sensor, requesting runs of `per_shard_job` (an asset job over the per-shard
    assets) for new and rewritten shards, and of `cross_shard_job` when shards leave."""
    @sensor(
        name="crawl_sensor",
        jobs=[per_shard_job, cross_shard_job],
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.STOPPED,
        description="Registers each new complete crawl shard as a partition and runs its per-shard assets; "
                    "a shard deleted from the crawl is removed and the cross-shard assets rerun without it.",
    )
    def crawl_sensor(context: SensorEvaluationContext, crawl: CrawlResource, lake: LakeResource) -> SensorResult:
        known = set(context.instance.get_dynamic_partitions(shard_partitions.name))
        shards, unsafe = split_shard_names(crawl.shards())
        if unsafe:  # a crawl file named e.g. "...tar" would make the shard "..": never a partition
            context.log.warning(f"skipping crawl shards with unsafe names: {unsafe[:10]}")
        fresh = [shard for shard in shards if shard not in known]
        seen = json.loads(context.cursor) if context.cursor else {}
        current = {shard: crawl.fingerprint(shard) for shard in shards}
        changed = [s for s in current if s in known and seen.get(s) not in (None, current[s])]
        # A shard only being rewritten (some files there) is not deleted.
        deleted = sorted(s for s in known - set(shards) if crawl.is_deleted(s))
        for shard in deleted:
            context.log.info(f"shard {shard} was deleted from the crawl: its lake files move to "
                             f"{lake.retire_shard(shard)} (clipsieve gc deletes them)")
        runs = [RunRequest(partition_key=shard, run_key=f"shard-{shard}-{current[shard]}",
                           job_name=per_shard_job.name) for shard in fresh + changed]
        if deleted:
            runs.append(RunRequest(run_key="removed-" + "-".join(f"{s}:{seen.get(s)}" for s in deleted),
                                   job_name=cross_shard_job.name, tags={"clipsieve/removed_shards": ",".join(deleted)}))
        requests = [shard_partitions.build_add_request(fresh)] if fresh else []
        if deleted:
            requests.append(DeleteDynamicPartitionsRequest(shard_partitions.name, deleted))
        return SensorResult(run_requests=runs, dynamic_partitions_requests=requests,
                            cursor=json.dumps(current, sort_keys=True))

    return crawl_sensor
