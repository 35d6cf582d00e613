"""audits/<policy>: what a policy kept and removed, before vs after, as JSON and metadata.

Metrics (queries in sql/audits/):
    crawl       rows, usable images, failed downloads, corrupt and missing images
    rates       samples, NSFW (punsafe > 0.5, > 0.9), watermark (pwatermark > 0.8), exact
                and perceptual-hash duplicate rates, English share, mean similarity
    languages   share of each caption language
"""

from typing import Any

from dagster import AssetExecutionContext, AssetKey, AssetsDefinition, MaterializeResult, MetadataValue, asset

from resources.catalog import Catalog, CatalogResource, read_sql
from resources.lake import LakeResource, audit_dir

CODE_VERSION = "1"


def audit_metrics(catalog: Catalog, policy: str) -> dict[str, Any]:
    """Every audit figure of one policy's subset against the scored pool."""
    connection = catalog.connection
    connection.execute("SET VARIABLE policy = ?", [policy])
    connection.execute(read_sql("audits/stages.sql"))
    crawl = catalog.query(read_sql("audits/crawl.sql")).to_pylist()[0]
    rates = {row.pop("stage"): row for row in catalog.query(read_sql("audits/rates.sql")).to_pylist()}
    empty = {"samples": 0}
    before, after = rates.get("before", empty), rates.get("after", empty)
    languages: dict[str, dict[str, float]] = {"before": {}, "after": {}}
    for row in catalog.query(read_sql("audits/languages.sql")).to_pylist():
        languages[row["stage"]][row["language"]] = row["share"]
    return {
        "policy": policy,
        "crawl": crawl,
        "before": before,
        "after": after,
        "removed": before["samples"] - after["samples"],
        "kept_share": after["samples"] / before["samples"] if before["samples"] else 0.0,
        "languages": languages,
    }


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def markdown_table(metrics: dict[str, Any]) -> str:
    """Before-vs-after table of the rate metrics, for the Dagster UI."""
    lines = ["| metric | before | after |", "|---|---|---|"]
    for name in metrics["before"]:
        lines.append(f"| {name} | {_cell(metrics['before'].get(name))} | {_cell(metrics['after'].get(name))} |")
    top = sorted(metrics["languages"]["before"].items(), key=lambda kv: -kv[1])[:8]
    for language, share in top:
        after = metrics["languages"]["after"].get(language, 0.0)
        lines.append(f"| language {language} | {share:.4f} | {after:.4f} |")
    return "\n".join(lines)


def build_audit_asset(policy: str, model_id: str) -> AssetsDefinition:
    @asset(
        name=policy,
        key_prefix="audits",
        deps=[AssetKey(["subsets", policy])],
        group_name="audits",
        code_version=f"{CODE_VERSION}+{model_id}",
        compute_kind="duckdb",
        description=f"Audit of subsets/{policy}: rates and language shares before vs after the policy.",
    )
    def audit(context: AssetExecutionContext, lake: LakeResource, catalog: CatalogResource) -> MaterializeResult:
        db = catalog.open(lake.url, model_id)
        try:
            metrics = {**audit_metrics(db, policy), "model_id": model_id}
        finally:
            db.close()
        folder = audit_dir(policy)
        lake.write_json(f"{folder}/metrics.json", metrics)
        return MaterializeResult(metadata={
            "kept": metrics["after"]["samples"],
            "removed": metrics["removed"],
            "kept_share": metrics["kept_share"],
            "nsfw_rate_after": metrics["after"].get("nsfw_rate") or 0.0,
            "audit": MetadataValue.md(markdown_table(metrics)),
            "path": lake.path(f"{folder}/metrics.json"),
        })

    return audit
