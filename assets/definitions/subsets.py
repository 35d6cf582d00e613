"""<policy>_subset: one Dagster asset per policy file, over assets/subsets.py.

The subset checks run on the candidate before it is committed: a blocking failure leaves
the last good subset (members, uids, index) in place.
"""

import json
import tempfile
from collections.abc import Iterator

from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from assets.definitions import checks
from assets.definitions.policy_keys import subset_key
from assets.definitions.step_resources import CPU_STEP
from assets.definitions.table_metadata import table_metadata
from assets.subsets import CODE_VERSION, Policy, commit_subset, select_candidate
from resources.catalog import CatalogResource
from resources.lake import LakeResource, checks_path, members_path, uids_path
from resources.versions import text_digest


class PolicyConfig(Config):
    params: dict[str, str] = Field(
        default_factory=dict,
        description="Replace policy parameters, e.g. {\"min_similarity\": \"0.25\"}. Numbers are "
        "read as numbers, anything else as text.",
    )


def build_subset_asset(policy: Policy, model_id: str, calibration: dict[str, object],
                       upstream: list[AssetKey], limits: dict[str, float | bool],
                       group: str = "subsets") -> AssetsDefinition:
    """The <policy>_subset asset; `calibration` holds the model's parameter values, `limits`
    the policy's check bounds (assets/definitions/checks.py), `group` its asset group."""

    key = subset_key(policy.name)
    blocking = checks.is_blocking(limits)
    try:
        params = json.dumps({**policy.defaults(), **calibration}, sort_keys=True, default=str)
    except ValueError as error:  # shown in the UI; the run fails with the same error
        params = f"(parameters not evaluated: {error})"

    @asset(
        op_tags=CPU_STEP,
        key=key,
        deps=upstream,
        output_required=False,  # a candidate that fails a blocking check is not materialized
        check_specs=checks.specs(key, checks.SUBSET_CHECKS, limits, blocking),
        group_name=group,
        code_version=f"{CODE_VERSION}+{model_id}+{policy.version(calibration)}",
        compute_kind="duckdb",
        description=f"Members kept by policy {policy.name} ({policy.name}.sql in the policy folder) with "
                    f"{params} "
                    "(the file's values, calibrated for the model; a run's config may override them).",
    )
    def subset(context: AssetExecutionContext, config: PolicyConfig, lake: LakeResource,
               catalog: CatalogResource):
        with tempfile.TemporaryDirectory(prefix="clipsieve-subset-") as scratch:
            yield from _select_and_commit(context, policy, model_id, {**calibration, **config.params}, limits,
                                          blocking, lake, catalog, scratch)

    return subset


def _select_and_commit(context: AssetExecutionContext, policy: Policy, model_id: str, params: dict[str, object],
                       limits: dict[str, float | bool], blocking: bool, lake: LakeResource,
                       catalog: CatalogResource, scratch: str) -> Iterator[AssetCheckResult | MaterializeResult]:
    """Select the policy's candidate into `scratch`, check it, and commit it unless a blocking
    check failed."""
    db = catalog.open(lake, model_id, snapshot=True)
    for shard, lacks in db.left_out.items():
        context.log.warning(f"{policy.name}_subset leaves out shard {shard}: {lacks}")
    try:
        candidate = select_candidate(db, policy, params, scratch)
    finally:
        db.close()
    members, after = candidate.members, candidate.figures["after"]
    results = checks.evaluate(checks.SUBSET_CHECKS, limits, {
        "nsfw_rate": after.get("nsfw_rate"),
        "duplicate_rate": after.get("near_duplicate_rate"),
        "group_removal_ratio": candidate.figures["representation"]["max_removal_ratio"],
    }, blocking)
    lake.write_json(checks_path(policy.name, candidate.version), checks.summary(results))
    if blocking and not all(r.passed for r in results):
        # Not committed: the last good subset stays what readers and the UI see; Dagster
        # fails the step on the blocking check and skips what is below.
        context.log.error(f"{policy.name}_subset: a blocking check failed; the candidate ({members.num_rows} "
                          f"members, {lake.path(checks_path(policy.name, candidate.version))}) is not "
                          "committed and the last good subset stays in place")
        yield from results
        return
    commit_subset(lake, policy.name, members, candidate.version, {
        "version": candidate.version, "checks": checks.summary(results), "params": candidate.params,
        "uids": uids_path(policy.name, candidate.version)}, candidate.uids)
    per_shard = candidate.per_shard
    yield MaterializeResult(check_results=results, metadata={
        **table_metadata(members),
        "members": members.num_rows,
        "draws": candidate.draws,
        "shards": len(per_shard),
        "members_per_shard": MetadataValue.json(per_shard),
        "pool": candidate.pool,
        "kept_share": members.num_rows / candidate.pool if candidate.pool else 0.0,
        "model_id": model_id,
        "sql_hash": text_digest(policy.sql),
        "params": MetadataValue.json(candidate.params),
        "sql": MetadataValue.md(f"```sql\n{policy.sql.strip()}\n```"),
        "version": candidate.version,
        "left_out_shards": MetadataValue.json(db.left_out),
        "path": lake.path(members_path(policy.name)),
    })

