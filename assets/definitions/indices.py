"""<policy>_index: the Dagster asset of each policy's faiss index, over assets/indices.py."""

from dagster import AssetExecutionContext, AssetKey, AssetsDefinition, MaterializeResult, asset

from assets.definitions import checks
from assets.definitions.policy_keys import index_key, subset_key
from assets.definitions.step_resources import CPU_STEP
from assets.index_subset import index_subset
from assets.indices import CODE_VERSION
from resources.indexing import IndexResource
from resources.lake import LakeResource, index_dir


def build_index_asset(policy: str, model_id: str, limits: dict[str, float | bool],
                      group: str = "indices") -> AssetsDefinition:
    """The <policy>_index asset; `limits`: the policy's check bounds (assets/definitions/checks.py)."""
    key = index_key(policy)
    blocking = checks.is_blocking(limits)

    @asset(
        op_tags=CPU_STEP,
        key=key,
        check_specs=checks.specs(key, checks.INDEX_CHECKS, limits, blocking),
        deps=[subset_key(policy), AssetKey("embeddings")],
        group_name=group,
        code_version=f"{CODE_VERSION}+{model_id}",
        compute_kind="faiss",
        description=f"faiss kNN index over the image embeddings of {policy}_subset.",
    )
    def index_asset(context: AssetExecutionContext, lake: LakeResource, indexing: IndexResource) -> MaterializeResult:
        info = index_subset(lake, policy, model_id, indexing.settings(), log=context.log.info)
        results = checks.evaluate(checks.INDEX_CHECKS, limits, {"recall_at_10": info["recall_at_10"]}, blocking)
        metadata = {k: v for k, v in info.items()
                    if k not in ("shard_versions", "groups", "trained", "parts", "segments")}
        if "trained" in info:  # an IVF in parts: when and why its quantizer was trained
            metadata.update({"parts": len(info["parts"]), "segments": [s["count"] for s in info["segments"]],
                             "trained_version": info["trained"]["version"],
                             "trained_reason": info["trained"]["reason"],
                             "trained_on_members": info["trained"]["members"]})
        return MaterializeResult(check_results=results, metadata={
            **metadata, "model_id": model_id, "path": lake.path(index_dir(policy, model_id))})

    return index_asset
