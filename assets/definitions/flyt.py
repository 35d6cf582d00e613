"""FLYT as Dagster assets over assets/flyt/: flyt_scorer (the pool) and scores/flyt (per shard),
M-FLYT's flyt_mix (the pool) and scores/mflyt (per shard), in the `flyt` group with the
policies that read the flyt_scores or mflyt_scores view.

Not part of a plain `clipsieve materialize` (it trains a model): `--flyt` adds the group, and
the UI materializes it like any other; automation refreshes the group's pool-wide assets on
the cron only once they have been materialized. flyt_scorer and flyt_mix report their
version as their data version: while one is kept (the pool has not outgrown it), the shards'
scores stay fresh and only a new shard is scored.
"""

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    AssetSelection,
    AutomationCondition,
    BackfillPolicy,
    DataVersion,
    MaterializeResult,
    asset,
)

from assets.definitions.partitions import for_each_shard, scored_pool, shard_batches, shard_partitions
from assets.definitions.step_resources import CPU_STEP
from assets.definitions.table_metadata import table_metadata
from assets.flyt import update
from resources.crawl import CrawlResource
from resources.flyt import FlytResource
from resources.lake import LakeResource, flyt_dir

FLYT_GROUP = "flyt"
SCORER, FLYT_SCORE = AssetKey("flyt_scorer"), AssetKey(["scores", "flyt"])
MIX, MIX_SCORE = AssetKey("flyt_mix"), AssetKey(["scores", "mflyt"])
# The views over FLYT's scores (sql/views/06_flyt_scores.sql, 07_mflyt_scores.sql) and the
# assets that write them: a policy reading one depends on that asset and is in the flyt group.
FLYT_VIEWS = {"flyt_scores": FLYT_SCORE, "mflyt_scores": MIX_SCORE}
# M-FLYT's inputs: every per-shard score a mix may read.
MIX_INPUTS = [AssetKey(["scores", name]) for name in ("clip_similarity", "nsfw", "watermark", "aesthetic",
                                                       "toxicity", "quality", "language")] + [FLYT_SCORE]



def _follows(model: AssetKey) -> AutomationCondition:
    """Like a shard's dedup assignment: a shard's score follows its own parents, and the
    pool-wide `model` only when its data version changes (a refresh that keeps it redoes no shard)."""
    return (
        (AutomationCondition.newly_missing() | AutomationCondition.code_version_changed()
         | AutomationCondition.any_deps_updated().ignore(AssetSelection.assets(model))
         | AutomationCondition.any_deps_match(AutomationCondition.data_version_changed())
         .allow(AssetSelection.assets(model))).since_last_handled()
        & ~AutomationCondition.any_deps_missing()
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
    ).with_label(f"eager on its shard, or a new {model.to_user_string()}")


def build_scorer_asset(model_id: str) -> AssetsDefinition:
    @asset(
        op_tags=CPU_STEP,
        key=SCORER,
        deps=[AssetKey("embeddings"), AssetKey("samples")],
        group_name=FLYT_GROUP,
        code_version=f"{update.CODE_VERSION}+{model_id}",
        compute_kind="torch",
    )
    def flyt_scorer(context: AssetExecutionContext, lake: LakeResource, crawl: CrawlResource,
                    flyt: FlytResource) -> MaterializeResult:
        """FLYT's scorer (SwiGLU over the image and text embeddings), trained so that a reference
        CLIP stepped on the pairs it favours does better on the downstream set; kept while it
        fits the pool."""
        info = update.update_scorer(lake, crawl, model_id, scored_pool(context, lake, model_id),
                                    flyt.settings(), context.log.info)
        context.log.info(f"flyt_scorer: {'trained' if info['retrained'] else 'kept'} ({info['reason']})")
        return MaterializeResult(data_version=DataVersion(info["version"]), metadata={
            **info, "path": lake.path(f"{flyt_dir(model_id)}/scorer.json")})

    return flyt_scorer


def _shard_score_asset(key: AssetKey, model: AssetKey, deps: list[AssetKey], description: str, load, score,
                       model_id: str, batches: BackfillPolicy) -> AssetsDefinition:
    """A per-shard score from a pool-wide `model` asset: `load(lake)` reads the committed model
    once a run, `score(lake, shard, loaded)` writes one shard's scores."""
    @asset(
        op_tags=CPU_STEP,
        key=key,
        deps=[AssetKey("embeddings"), model, *deps],
        partitions_def=shard_partitions,
        group_name=FLYT_GROUP,
        code_version=f"{update.CODE_VERSION}+{model_id}",
        compute_kind="torch",
        backfill_policy=batches,
        automation_condition=_follows(model),
        description=description,
    )
    def shard_score(context: AssetExecutionContext, lake: LakeResource) -> MaterializeResult:
        loaded = load(lake)

        def one(shard: str) -> dict:
            table, figures = score(lake, shard, loaded)
            return {**figures, **table_metadata(table)}

        return for_each_shard(context, one)

    return shard_score


def build_flyt_score_asset(model_id: str, batches: BackfillPolicy = shard_batches()) -> AssetsDefinition:
    return _shard_score_asset(
        FLYT_SCORE, SCORER, [], "The FLYT scorer's score of each embedded pair of the shard (`flyt`; higher: "
        "weighted up).", lambda lake: update.read_scorer(lake, model_id),
        lambda lake, shard, scorer: update.score_shard(lake, shard, model_id, scorer), model_id, batches)


def build_mix_asset(model_id: str) -> AssetsDefinition:
    @asset(
        op_tags=CPU_STEP,
        key=MIX,
        deps=[AssetKey("embeddings"), AssetKey("samples"), *MIX_INPUTS],
        group_name=FLYT_GROUP,
        code_version=f"{update.CODE_VERSION}+{model_id}",
        compute_kind="torch",
    )
    def flyt_mix(context: AssetExecutionContext, lake: LakeResource, crawl: CrawlResource,
                 flyt: FlytResource) -> MaterializeResult:
        """M-FLYT: a linear mix of score columns (the flyt resource's mix_columns), trained with FLYT's
        loop or given in a file; kept while it fits the pool."""
        info = update.update_mix(lake, crawl, model_id, scored_pool(context, lake, model_id), flyt.settings(),
                                 context.log.info)
        context.log.info(f"flyt_mix: {'fitted' if info['retrained'] else 'kept'} ({info['reason']})")
        weights = dict(zip(info["mix"]["columns"], info["mix"]["weights"]))
        return MaterializeResult(data_version=DataVersion(info["version"]), metadata={
            **{k: v for k, v in info.items() if k != "mix"}, "weights": weights,
            "path": lake.path(f"{flyt_dir(model_id)}/mix.json")})

    return flyt_mix


def build_mix_score_asset(model_id: str, batches: BackfillPolicy = shard_batches()) -> AssetsDefinition:
    return _shard_score_asset(
        MIX_SCORE, MIX, MIX_INPUTS, "The M-FLYT mix's score of each embedded pair of the shard (`mflyt`).",
        lambda lake: update.read_score_mix(lake, model_id),
        lambda lake, shard, mix: update.mix_shard(lake, shard, model_id, mix), model_id, batches)


def build_flyt_assets(model_id: str, batches: BackfillPolicy = shard_batches()) -> list[AssetsDefinition]:
    return [build_scorer_asset(model_id), build_flyt_score_asset(model_id, batches), build_mix_asset(model_id),
            build_mix_score_asset(model_id, batches)]
