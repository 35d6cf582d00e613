"""near_duplicates: the Dagster asset over assets/near_duplicates.py."""

from dagster import AssetExecutionContext, AssetKey, AssetsDefinition, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from assets.definitions.partitions import shard_partitions
from assets.near_duplicates import CODE_VERSION, DedupParams, find_duplicates, load_dedup_inputs
from resources.lake import LakeResource, dedup_path


class DedupConfig(Config):
    cluster_size: int = Field(default=200, description="Average samples per k-means cluster.")
    eps: float = Field(default=0.1, description="Candidate pairs have cosine >= 1 - eps (SemDeDup's epsilon).")
    min_thumbnail_correlation: float = Field(
        default=0.975, description="Keep a candidate pair only if its 8x8 thumbnails correlate this much (0: off).")
    seed: int = Field(default=0, description="k-means seed.")


def build_near_duplicates_asset(model_id: str) -> AssetsDefinition:
    @asset(
        name="near_duplicates",
        deps=[AssetKey("embeddings"), AssetKey(["scores", "image_hashes"])],
        group_name="dedup",
        code_version=f"{CODE_VERSION}+{model_id}",
        compute_kind="faiss",
    )
    def near_duplicates(context: AssetExecutionContext, config: DedupConfig, lake: LakeResource) -> MaterializeResult:
        """Duplicate groups across all shards: SemDeDup clusters + exact and perceptual hashes."""
        # The registered partitions name the shards with no output at all (a failed `samples`).
        samples, vectors, left_out = load_dedup_inputs(lake, model_id,
                                                        context.instance.get_dynamic_partitions(shard_partitions.name))
        for shard, reason in left_out.items():
            context.log.warning(f"near_duplicates leaves out shard {shard}: {reason}")
        params = DedupParams(config.cluster_size, config.eps, config.min_thumbnail_correlation, config.seed)
        table = find_duplicates(samples, vectors, params)
        lake.write_parquet(dedup_path(model_id), table)
        reasons = [r for r in table.column("duplicate_reason").to_pylist() if r]
        return MaterializeResult(metadata={
            "samples": table.num_rows,
            "duplicates": len(reasons),
            **{f"duplicates/{r}": reasons.count(r) for r in ("exact", "phash", "semantic")},
            "clusters": int(len(set(table.column("cluster").to_pylist()))),
            "left_out_shards": MetadataValue.json(left_out),
            "model_id": model_id,
            "path": lake.path(dedup_path(model_id)),
        })

    return near_duplicates
