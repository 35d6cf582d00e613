"""evaluation: the Dagster asset that measures filters and policies against ground truth,
over assets/evaluation.py."""

from dagster import AssetExecutionContext, AssetKey, AssetsDefinition, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from assets.definitions.policy_keys import subset_key
from assets.definitions.step_resources import CPU_STEP
from assets.evaluation import CODE_VERSION, EVALUATION_PATH, evaluate, format_tables, head_kinds, read_truth
from assets.preference.evaluation import evaluate_preference, read_candidate_truth
from assets.subsets import Policy
from resources.catalog import CatalogResource
from resources.clip_model import ClipModelResource
from resources.crawl import CrawlResource
from resources.heads import HeadsResource
from resources.lake import LakeResource
from resources.preference import PreferenceResource


class EvaluationConfig(Config):
    truth: str = Field(
        default="",
        description="Ground-truth parquet (key, shard, defect); empty: the crawl's ground_truth.parquet. A "
        "candidate_truth.parquet beside it measures the preference pairs.",
    )


def build_evaluation_asset(model_id: str, policies: list[Policy], calibration: dict[str, dict[str, object]],
                           heads_version: str = "", preference_calibration: dict[str, float] | None = None,
                           ) -> AssetsDefinition:
    """`heads_version`: a digest of the head files and prompts it compares;
    `preference_calibration`: the model's calibrated values of the preference rules."""
    preference_calibration = preference_calibration or {}
    @asset(
        op_tags=CPU_STEP,
        name="evaluation",
        deps=[AssetKey("near_duplicates"), AssetKey(["scores", "flyt"]), AssetKey("preference_pairs")]
        + [subset_key(p.name) for p in policies],
        group_name="evaluation",
        code_version=f"{CODE_VERSION}+{model_id}+{heads_version}",
        compute_kind="duckdb",
    )
    def evaluation(context: AssetExecutionContext, config: EvaluationConfig, crawl: CrawlResource,
                   lake: LakeResource, catalog: CatalogResource, heads: HeadsResource,
                   clip: ClipModelResource, preference: PreferenceResource) -> MaterializeResult:
        """Filters and policies measured against the crawl's ground truth (the sample crawl's);
        the NSFW and watermark heads for each kind that fits the model."""
        if config.truth:
            truth, truth_table = config.truth, read_truth(config.truth)
            candidate_truth = read_candidate_truth(config.truth)
        else:
            truth = f"{crawl.url}/ground_truth.parquet"
            truth_table = read_truth(crawl.file("ground_truth", ".parquet"), crawl.filesystem())
            candidate_truth = read_candidate_truth(crawl.file("ground_truth", ".parquet"), crawl.filesystem())
        db = catalog.open(lake, model_id)
        try:
            result = evaluate(db, truth_table, policies, calibration, head_kinds(lake, model_id, heads, clip))
            result["preference"] = evaluate_preference(db, truth_table, candidate_truth,
                                                       preference.rules(preference_calibration))
        finally:
            db.close()
        lake.write_json(EVALUATION_PATH, {**result, "model_id": model_id, "truth": truth})
        return MaterializeResult(metadata={
            "evaluation": MetadataValue.md(format_tables(result)),
            "model_id": model_id,
            "path": lake.path(EVALUATION_PATH),
        })

    return evaluation
