"""<policy>_audit: the Dagster asset of each policy's audit, over assets/audits.py."""

from dagster import AssetExecutionContext, AssetsDefinition, MaterializeResult, MetadataValue, asset

from assets.audits.metrics import CODE_VERSION, audit_metrics, markdown_table, write_audit
from assets.definitions import checks
from assets.definitions.policy_keys import audit_key, index_key, subset_key
from assets.definitions.step_resources import CPU_STEP
from resources.catalog import CatalogResource
from resources.clip_model import ClipModelResource
from resources.curation_files import CurationFiles
from resources.lake import LakeResource


def build_audit_asset(policy: str, model_id: str, limits: dict[str, float | bool],
                      group: str = "audits") -> AssetsDefinition:
    """The <policy>_audit asset; `limits`: the policy's check bounds (assets/definitions/checks.py)."""
    key = audit_key(policy)

    @asset(
        op_tags=CPU_STEP,
        key=key,
        check_specs=checks.specs(key, checks.AUDIT_CHECKS, limits, blocking=False),
        deps=[subset_key(policy), index_key(policy)],
        group_name=group,
        code_version=f"{CODE_VERSION}+{model_id}",
        compute_kind="duckdb",
        description=f"Audit of {policy}_subset: rates, distributions, representation, retrieval bias and "
                    "association, before vs after the policy, with an HTML report.",
    )
    def audit(context: AssetExecutionContext, lake: LakeResource, catalog: CatalogResource,
              clip: ClipModelResource, files: CurationFiles) -> MaterializeResult:
        db = catalog.open(lake, model_id, snapshot=True)
        try:
            metrics = {**audit_metrics(db, policy, lake, model_id, clip.load(), files.neutral_prompts,
                                       files.association_terms, files.metaclip_entries), "model_id": model_id}
        finally:
            db.close()
        metrics_path, report_path = write_audit(lake, policy, metrics)
        results = checks.evaluate(checks.AUDIT_CHECKS, limits, {
            "retrieval_skew": metrics["retrieval_bias"]["mean_max_skew"]}, blocking=False)
        return MaterializeResult(check_results=results, metadata={
            "kept": metrics["after"]["samples"],
            "removed": metrics["removed"],
            "kept_share": metrics["kept_share"],
            "nsfw_rate_after": metrics["after"].get("nsfw_rate") or 0.0,
            "max_removal_ratio": metrics["representation"]["max_removal_ratio"] or 0.0,
            "audit": MetadataValue.md(markdown_table(metrics)),
            "report": MetadataValue.path(lake.path(report_path)),
            "path": lake.path(metrics_path),
        })

    return audit
