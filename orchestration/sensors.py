"""The crawl sensor: keeps the shard partitions equal to the crawl's complete shards, and
asks Dagster to observe them whenever the crawl's listing changes.

A shard counts once its tar, parquet and stats file are all present (img2dataset writes
the stats file last, so a shard still being written is not picked up). New shards become
partitions; a shard deleted from the crawl (none of its files left) leaves: its partition
is removed, its lake files move to retired/ and the cross-shard assets run without it.
Whether a shard's assets must run is not decided here: the observation gives each shard
its data version (assets/definitions/crawl_shard.py) and the assets' automation conditions act on it
(orchestration/schedules.py). The cursor only remembers the listing last observed.
"""

import hashlib
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

from assets.definitions.partitions import shard_partitions
from resources.crawl import CrawlResource
from resources.lake import LakeResource
from resources.safe_paths import split_shard_names


def new_shards(crawl: CrawlResource, known: set[str]) -> list[str]:
    """Complete shards of the crawl that are not partitions yet (safe names only)."""
    return [shard for shard in split_shard_names(crawl.shards())[0] if shard not in known]


def build_crawl_sensor(observe_job: JobDefinition, cross_shard_job: JobDefinition) -> SensorDefinition:
    """The sensor, requesting runs of `observe_job` (observing crawl_shard) when the crawl's
    listing changed, and of `cross_shard_job` when shards left the crawl."""
    @sensor(
        name="crawl_sensor",
        jobs=[observe_job, cross_shard_job],
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.STOPPED,
        description="Registers each new complete crawl shard as a partition and observes the crawl when its "
                    "files change (the automation conditions then run what changed); a shard deleted from the "
                    "crawl is removed and the cross-shard assets rerun without it.",
    )
    def crawl_sensor(context: SensorEvaluationContext, crawl: CrawlResource, lake: LakeResource) -> SensorResult:
        known = set(context.instance.get_dynamic_partitions(shard_partitions.name))
        fingerprints = crawl.fingerprints()
        shards, unsafe = split_shard_names(list(fingerprints))
        if unsafe:  # a crawl file named e.g. "...tar" would make the shard "..": never a partition
            context.log.warning(f"skipping crawl shards with unsafe names: {unsafe[:10]}")
        fresh = [shard for shard in shards if shard not in known]
        # A shard only being rewritten (some files there) is not deleted.
        deleted = sorted(s for s in known - set(shards) if crawl.is_deleted(s))
        for shard in deleted:
            context.log.info(f"shard {shard} was deleted from the crawl: its lake files move to "
                             f"{lake.retire_shard(shard)} (clipsieve gc deletes them)")
        listing = hashlib.sha256(json.dumps({s: fingerprints[s] for s in shards}, sort_keys=True).encode()).hexdigest()
        runs = []
        if shards and listing != context.cursor:
            runs.append(RunRequest(run_key=f"observe-{listing[:16]}", job_name=observe_job.name))
        if deleted:
            runs.append(RunRequest(run_key=f"removed-{listing[:16]}-{','.join(deleted)}", job_name=cross_shard_job.name,
                                   tags={"clipsieve/removed_shards": ",".join(deleted)}))
        requests = [shard_partitions.build_add_request(fresh)] if fresh else []
        if deleted:
            requests.append(DeleteDynamicPartitionsRequest(shard_partitions.name, deleted))
        return SensorResult(run_requests=runs, dynamic_partitions_requests=requests, cursor=listing)

    return crawl_sensor
