"""crawl_shard: the crawl's shards, observed. One partition per registered shard; its data
version is the fingerprint of the shard's three files (size and modification time of the
tar, parquet and stats file). Every per-shard asset depends on it, so a shard rewritten
under its name makes exactly that shard's assets (and what reads them) stale in Dagster's
own eyes, once the change is observed: by `clipsieve materialize`, by the crawl sensor, or
by "Observe sources" in the UI.
"""

from dagster import DataVersion, DataVersionsByPartition, observable_source_asset

from assets.definitions.partitions import shard_partitions
from resources.crawl import CrawlResource


@observable_source_asset(
    partitions_def=shard_partitions,
    group_name="crawl",
    description="An img2dataset shard: NNNNN.tar, NNNNN.parquet and NNNNN_stats.json in the crawl folder; "
                "observed, never written here. Data version: the three files' size and mtime, hashed.",
)
def crawl_shard(context, crawl: CrawlResource) -> DataVersionsByPartition:
    registered = set(context.instance.get_dynamic_partitions(shard_partitions.name))
    # A registered shard missing from the crawl (deleted, or being rewritten) is not observed.
    return DataVersionsByPartition({shard: DataVersion(fingerprint)
                                    for shard, fingerprint in crawl.fingerprints().items() if shard in registered})
