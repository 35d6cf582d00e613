"""The samples asset: every crawl row of a shard with its image status (assets/samples.py)."""

import pyarrow.compute as pc
from dagster import AssetExecutionContext, AssetsDefinition, BackfillPolicy, MaterializeResult, MetadataValue, asset

from assets.crawl.image_worker import ImageCheckWorker
from assets.definitions.crawl_shard import crawl_shard
from assets.definitions.partitions import for_each_shard, shard_partitions
from assets.definitions.step_resources import CPU_STEP
from assets.definitions.table_metadata import table_metadata
from assets.samples import CODE_VERSION, write_samples
from resources.crawl import CrawlResource
from resources.lake import LakeResource, samples_path


def build_samples_asset(batches: BackfillPolicy) -> AssetsDefinition:
    """The samples asset, run in batches of shards as `batches` says."""

    @asset(
        op_tags=CPU_STEP,
        partitions_def=shard_partitions,
        deps=[crawl_shard],
        group_name="per_shard",
        code_version=CODE_VERSION,
        compute_kind="pyarrow",
        backfill_policy=batches,
    )
    def samples(context: AssetExecutionContext, crawl: CrawlResource, lake: LakeResource) -> MaterializeResult:
        """Every input row of the shard, with tar member and image status, then the tar's
        members no row claims; nothing dropped."""
        def one(shard: str) -> dict:
            fingerprint = crawl.fingerprint(shard)
            result, retired = write_samples(crawl, lake, shard, fingerprint, checker)
            if retired:
                context.log.warning(f"{shard}: the crawl's files changed since its outputs were computed; "
                                    f"they moved to {retired} and the shard is out of the pool until they are rebuilt")
            table = result.table
            statuses = pc.value_counts(table.column("image_status")).to_pylist()
            for note in result.notes:
                context.log.warning(f"{shard}: {note}")
            return {
                "crawl_fingerprint": fingerprint,
                "rows": table.num_rows,
                "parquet_rows": int(pc.count(table.column("parquet_row")).as_py()),
                "usable_images": sum(s["counts"] for s in statuses if s["values"] == "ok"),
                **{f"image_status/{s['values']}": s["counts"] for s in statuses},
                "caption_errors": int(pc.count(table.column("caption_error")).as_py()),
                "row_warnings": int(pc.count(table.column("row_warnings")).as_py()),
                "crawl_notes": MetadataValue.json(result.notes),
                "crawl": crawl.url,
                "path": lake.path(samples_path(shard)),
                **table_metadata(table),
            }

        # One image-checking worker for every shard of the run.
        with ImageCheckWorker(crawl.image_check_seconds) as checker:
            result = for_each_shard(context, one)
        # No data version is set here: Dagster's own, from the code version and each shard's
        # observed crawl_shard version, differs per shard even when shards share a run.
        return MaterializeResult(metadata=result.metadata)

    return samples
