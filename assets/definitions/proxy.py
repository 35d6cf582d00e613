"""downstream_proxy: every subset trains the same small CLIP from scratch and is measured on a
held-out labelled set (assets/downstream_proxy.py), in the `proxy` group.

It trains a model per subset and seed, so no plain `clipsieve materialize` runs it: the UI
does (the `proxy` job), or `clipsieve proxy`, and automation refreshes it on the cron only
once it has been materialized.
"""

from dagster import AssetExecutionContext, AssetKey, AssetsDefinition, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from assets.definitions.policy_keys import subset_key
from assets.definitions.step_resources import CPU_STEP
from assets.downstream_proxy import (
    HELDOUT_SAMPLES,
    PROXY_PATH,
    ProxySettings,
    format_table,
    proxy_subsets,
    results_json,
    run_proxy,
)
from assets.flyt.downstream import HELDOUT_SEED, generate_scenes, read_downstream
from resources.catalog import CatalogResource
from resources.crawl import CrawlResource
from resources.lake import LakeResource

PROXY_GROUP = "proxy"
CODE_VERSION = "1"


class ProxyConfig(Config):
    steps: int = Field(default=ProxySettings.steps, description="Training steps per subset and seed.")
    batch_size: int = Field(default=ProxySettings.batch_size, description="Pairs per step (the budget: steps x batch).")
    lr: float = Field(default=ProxySettings.lr, description="AdamW learning rate (warm-up, then cosine).")
    seeds: list[int] = Field(default=list(ProxySettings.seeds), description="One training run per seed.")
    heldout: str = Field(default="", description="The held-out labelled set (a downstream set file); empty: "
                         f"{HELDOUT_SAMPLES} generated scenes of the sample crawl's world (seed {HELDOUT_SEED}).")


def build_proxy_asset(model_id: str, policies: list[str]) -> AssetsDefinition:
    @asset(
        op_tags=CPU_STEP,
        name="downstream_proxy",
        deps=[subset_key(p) for p in policies] + [AssetKey("embeddings")],
        group_name=PROXY_GROUP,
        code_version=f"{CODE_VERSION}+{model_id}",
        compute_kind="torch",
    )
    def downstream_proxy(context: AssetExecutionContext, config: ProxyConfig, lake: LakeResource,
                         crawl: CrawlResource, catalog: CatalogResource) -> MaterializeResult:
        """Zero-shot accuracy of the demo architecture trained from scratch on each subset with the
        same budget (DataComp's protocol in miniature), against a random half of the pool."""
        settings = ProxySettings(config.steps, config.batch_size, config.lr, tuple(config.seeds))
        heldout = read_downstream(config.heldout) if config.heldout else generate_scenes(HELDOUT_SAMPLES, HELDOUT_SEED)
        db = catalog.open(lake, model_id)
        try:
            subsets = proxy_subsets(db)
        finally:
            db.close()
        results = run_proxy(lake, crawl, subsets, heldout, settings, context.log.info)
        lake.write_json(PROXY_PATH, {**results_json(results, settings, heldout), "model_id": model_id})
        return MaterializeResult(metadata={"proxy": MetadataValue.md(format_table(results, settings, heldout)),
                                           "path": lake.path(PROXY_PATH)})

    return downstream_proxy
