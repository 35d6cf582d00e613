"""Near-duplicates as three Dagster assets over assets/dedup/: dedup_centroids (the pool),
dedup_assignment (per shard) and near_duplicates (the pool, a group of clusters at a time).

dedup_centroids reports its centroids' version as its data version: when it keeps them (the
pool has not outgrown them), the shards' assignments stay fresh and only a new shard is
assigned."""

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    AssetSelection,
    AutomationCondition,
    BackfillPolicy,
    DataVersion,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets.dedup import assignment, centroids, near_duplicates
from assets.definitions.partitions import for_each_shard, scored_pool, shard_batches, shard_partitions
from assets.definitions.step_resources import CPU_STEP
from resources.catalog import CatalogResource
from resources.dedup import DedupResource
from resources.lake import LakeResource, dedup_dir

CENTROIDS, ASSIGNMENT = AssetKey("dedup_centroids"), AssetKey("dedup_assignment")
# An assignment follows its shard's embeddings as every per-shard asset follows its parents,
# and the centroids only when their data version changes: a refresh that keeps them
# materializes them again with the same one.
ASSIGNMENT_AUTOMATION = (
    (AutomationCondition.newly_missing() | AutomationCondition.code_version_changed()
     | AutomationCondition.any_deps_updated().ignore(AssetSelection.assets(CENTROIDS))
     | AutomationCondition.any_deps_match(AutomationCondition.data_version_changed())
     .allow(AssetSelection.assets(CENTROIDS))).since_last_handled()
    & ~AutomationCondition.any_deps_missing()
    & ~AutomationCondition.any_deps_in_progress()
    & ~AutomationCondition.in_progress()
).with_label("eager on its shard, or new centroids")


def build_centroids_asset(model_id: str) -> AssetsDefinition:
    @asset(
        op_tags=CPU_STEP,
        key=CENTROIDS,
        deps=[AssetKey("embeddings")],
        group_name="dedup",
        code_version=f"{centroids.CODE_VERSION}+{model_id}",
        compute_kind="faiss",
    )
    def dedup_centroids(context: AssetExecutionContext, lake: LakeResource, dedup: DedupResource) -> MaterializeResult:
        """Spherical k-means centroids of the pool's image embeddings, trained on a bounded sample;
        kept while they fit the pool."""
        info = centroids.update_centroids(lake, model_id, scored_pool(context, lake, model_id), dedup.settings())
        context.log.info(f"dedup_centroids: {'trained' if info['retrained'] else 'kept'} {info['clusters']} "
                         f"centroids ({info['reason'] if info['retrained'] else 'they still fit the pool'})")
        return MaterializeResult(data_version=DataVersion(info["version"]), metadata={
            **{k: v for k, v in info.items() if k != "settings"},
            "path": lake.path(f"{dedup_dir(model_id)}/centroids.json")})

    return dedup_centroids


def build_assignment_asset(model_id: str, batches: BackfillPolicy = shard_batches()) -> AssetsDefinition:
    @asset(
        op_tags=CPU_STEP,
        key=ASSIGNMENT,
        deps=[AssetKey("embeddings"), CENTROIDS],
        partitions_def=shard_partitions,
        group_name="dedup",
        code_version=f"{assignment.CODE_VERSION}+{model_id}",
        compute_kind="faiss",
        backfill_policy=batches,
        automation_condition=ASSIGNMENT_AUTOMATION,
    )
    def dedup_assignment(context: AssetExecutionContext, lake: LakeResource, dedup: DedupResource) -> MaterializeResult:
        """Each sample's nearest centroid (and the neighbouring clusters it visits), its vectors in cluster order."""
        committed = centroids.read_centroids(lake, model_id)
        if committed is None:
            raise ValueError("no dedup centroids yet: materialize dedup_centroids first")
        settings = dedup.settings()
        return for_each_shard(context, lambda shard: assignment.assign_shard(lake, shard, model_id, committed,
                                                                             settings))

    return dedup_assignment


def build_near_duplicates_asset(model_id: str) -> AssetsDefinition:
    @asset(
        op_tags=CPU_STEP,
        name="near_duplicates",
        deps=[ASSIGNMENT, AssetKey(["scores", "image_hashes"])],
        group_name="dedup",
        code_version=f"{near_duplicates.CODE_VERSION}+{model_id}",
        compute_kind="faiss",
    )
    def near_duplicates_asset(context: AssetExecutionContext, lake: LakeResource, catalog: CatalogResource,
                              dedup: DedupResource) -> MaterializeResult:
        """Duplicate groups across all shards: pairs within clusters, exact and perceptual hashes."""
        shards, settings = scored_pool(context, lake, model_id), dedup.settings()
        db = catalog.open(lake, model_id, memory_limit=settings.duckdb_memory_limit)
        try:
            figures = near_duplicates.find_near_duplicates(lake, db, model_id, shards, settings, context.log.info)
        finally:
            db.close()
        for shard, reason in figures["left_out_shards"].items():
            context.log.warning(f"near_duplicates leaves out shard {shard}: {reason}")
        return MaterializeResult(metadata={
            **{k: v for k, v in figures.items() if k != "left_out_shards"},
            "left_out_shards": MetadataValue.json(figures["left_out_shards"]),
            "model_id": model_id,
            "path": lake.path(f"{dedup_dir(model_id)}/state.json"),
        })

    return near_duplicates_asset


def build_dedup_assets(model_id: str, batches: BackfillPolicy = shard_batches()) -> list[AssetsDefinition]:
    return [build_centroids_asset(model_id), build_assignment_asset(model_id, batches),
            build_near_duplicates_asset(model_id)]
