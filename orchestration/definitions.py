"""The Dagster code location: every asset, job, sensor and resource of clipsieve.

Settings are resources whose fields take their defaults from environment variables when
the code location loads (each field's description names its variable):
    CLIPSIEVE_CRAWL       the img2dataset crawl folder (or fsspec URL)      crawl
    CLIPSIEVE_LAKE        where outputs go                                  lake
    CLIPSIEVE_MODEL       open_clip model name (default: the demo model)    clip
    CLIPSIEVE_PRETRAINED  open_clip pretrained tag or checkpoint path       clip
    CLIPSIEVE_POLICY_DIR, CLIPSIEVE_CHECKS and the term lists               files
and these shape the definitions themselves:
    CLIPSIEVE_REFRESH_CRON, CLIPSIEVE_SHARDS_PER_RUN                        schedules, run batches
    CLIPSIEVE_EXECUTOR, CLIPSIEVE_RAY_ADDRESS, CLIPSIEVE_EMBEDDING_GPUS     where steps run (execution.py)
The model id is part of the code version of every asset computed from embeddings, so a
model change marks exactly those assets stale.
"""

import json
import os
from pathlib import Path

from dagster import (
    AssetKey,
    AssetsDefinition,
    AssetSelection,
    AssetSpec,
    AutomationCondition,
    Definitions,
    ExecutorDefinition,
    define_asset_job,
    in_process_executor,
    multi_or_in_process_executor,
)

from assets.definitions import (
    audits,
    embeddings,
    evaluation,
    flyt,
    indices,
    near_duplicates,
    preference,
    proxy,
    samples,
    scores,
    subsets,
)
from assets.definitions.checks import bounds as check_bounds
from assets.definitions.crawl_shard import crawl_shard
from assets.definitions.partitions import DEFAULT_SHARDS_PER_RUN, shard_batches, shard_partitions
from assets.evaluation import HEAD_FILTERS
from assets.subsets import calibrated_params, load_policies
from orchestration.demo_crawl import demo_crawl
from orchestration.execution import executor_from_env
from orchestration.schedules import (
    DEFAULT_REFRESH_CRON,
    PER_SHARD_AUTOMATION,
    build_refresh_schedule,
    cross_shard_automation,
)
from orchestration.sensors import build_crawl_sensor
from resources.catalog import CatalogResource
from resources.clip_model import ClipModelResource
from resources.crawl import CrawlResource
from resources.curation_files import DEFAULTS as CURATION_FILE_VARIABLES
from resources.curation_files import CurationFiles
from resources.dedup import DedupResource
from resources.flyt import FlytResource
from resources.heads import HeadsResource
from resources.indexing import IndexResource
from resources.lake import LakeResource
from resources.preference import PreferenceResource, calibrated_rules
from resources.versions import text_digest

PER_SHARD_GROUPS = ("per_shard", "scores", preference.PREFERENCE_GROUP)
CROSS_SHARD_GROUPS = ("dedup", "subsets", "indices", "audits", "evaluation")
# Runs execute their steps in the run's own process: a step in a process of its own costs
# seconds of imports and model loading, for steps of seconds on a crawl of thousands of
# samples (a launched cross_shard run of 3 x 40 samples: 76 s with a process per step,
# 17 s in process). The cross_shard job's launchpad can switch to a process per step.
CROSS_SHARD_EXECUTION = {"execution": {"config": {"in_process": {}}}}


def build_assets(clip: ClipModelResource, heads: HeadsResource, files: CurationFiles | None = None,
                 shards_per_run: int = DEFAULT_SHARDS_PER_RUN, embedding_gpus: float = 0,
                 preferences: PreferenceResource | None = None) -> list[AssetsDefinition | AssetSpec]:
    """Every asset for one model: per-shard stages (run `shards_per_run` shards to a run; the
    embeddings step asks for `embedding_gpus` GPUs) with the preference pairs' (`preferences`:
    their sources and rules), then one subset, index and audit per policy file in
    `files.policy_dir`, checked against the bounds in `files.checks` (default: the shipped files)."""
    files = files or CurationFiles()
    model_id = clip.model_id
    batches = shard_batches(shards_per_run)
    per_shard = [
        samples.build_samples_asset(batches),
        embeddings.build_embeddings_asset(model_id, clip.precision, batches, embedding_gpus),
        scores.build_clip_similarity_asset(model_id, batches),
        *scores.build_head_assets(model_id, heads, clip.embedding_dim, batches),
        scores.build_language_asset(batches),
        scores.build_quality_asset(batches),
        scores.build_image_hashes_asset(batches),
        scores.build_toxicity_asset(batches, files.toxic_terms),
        scores.build_caption_terms_asset(batches, files.metaclip_entries, files.group_terms),
    ]
    pairs = preference.build_preference_assets(model_id, preferences or PreferenceResource(),
                                               calibrated_rules(clip.pretrained), batches)
    dedup = near_duplicates.build_dedup_assets(model_id, batches)
    learned = flyt.build_flyt_assets(model_id, batches)
    # A subset reads every per-shard output and the duplicate groups; one that reads a view of
    # FLYT's scores also those, and belongs to the flyt group with them.
    upstream = [a.key for a in per_shard] + [dedup[-1].key]
    calibration = calibrated_params(clip.pretrained)
    policies = load_policies(Path(files.policy_dir))
    per_policy = []
    for policy in policies:
        limits = check_bounds(policy.name, files.checks)
        flyt_scores = [score for view, score in flyt.FLYT_VIEWS.items() if policy.reads(view)]
        deps = upstream + flyt_scores
        group = {"group": flyt.FLYT_GROUP} if flyt_scores else {}
        per_policy += [
            subsets.build_subset_asset(policy, model_id, calibration.get(policy.name, {}), deps, limits, **group),
            indices.build_index_asset(policy.name, model_id, limits, **group),
            audits.build_audit_asset(policy.name, model_id, limits, **group),
        ]
    return [
        crawl_shard,
        *per_shard,
        *pairs,
        *dedup,
        *learned,
        *per_policy,
        proxy.build_proxy_asset(model_id, [p.name for p in policies]),
        evaluation.build_evaluation_asset(model_id, policies, calibration, text_digest(json.dumps(
            [c.version for name in HEAD_FILTERS for c in heads.choices(name, clip.embedding_dim)])),
            calibrated_rules(clip.pretrained)),
    ]


def per_shard_keys(definitions: Definitions, with_flyt: bool = False) -> list[AssetKey]:
    """The per-shard assets of `definitions`: those materialized per crawl shard (by a plain
    `clipsieve materialize`; `with_flyt`: also the flyt group's, as `--flyt` adds them)."""
    graph = definitions.resolve_asset_graph()
    return [key for key in graph.materializable_asset_keys if graph.get(key).partitions_def is not None
            and (with_flyt or graph.get(key).group_name != flyt.FLYT_GROUP)]


def build_resources(crawl: str | Path | None = None, lake: str | Path | None = None, model_name: str | None = None,
                    pretrained: str | Path | None = None, policy_dir: str | Path | None = None,
                    checks: str | Path | None = None) -> dict:
    """Resources with defaults from the environment; arguments override them."""
    clip = ClipModelResource()
    if model_name is not None or pretrained is not None:
        clip = ClipModelResource(model_name=model_name or clip.model_name, pretrained=str(pretrained or ""))
    return {
        "crawl": CrawlResource(root=str(crawl)) if crawl else CrawlResource(),
        "lake": LakeResource(root=str(lake)) if lake else LakeResource(),
        "clip": clip,
        "heads": HeadsResource(),
        "catalog": CatalogResource(),
        "indexing": IndexResource(),
        "dedup": DedupResource(),
        "flyt": FlytResource(),
        "preference": PreferenceResource(),
        "files": CurationFiles.from_env(policy_dir=policy_dir, checks=checks),
    }


PER_SHARD_JOB, CROSS_SHARD_JOB, FLYT_JOB, PROXY_JOB = "per_shard", "cross_shard", "flyt", "proxy"
OBSERVE_CRAWL_JOB = "observe_crawl"
# The per_shard job runs every shard-partitioned asset, the flyt job FLYT's pool-wide assets
# (the scorer and the policies over its scores: it trains, so no refresh runs it unasked),
# the cross_shard job every other one.
PER_SHARD_SELECTION = (AssetSelection.groups(*PER_SHARD_GROUPS)
                       | AssetSelection.assets(near_duplicates.ASSIGNMENT, flyt.FLYT_SCORE, flyt.MIX_SCORE))
FLYT_SELECTION = AssetSelection.groups(flyt.FLYT_GROUP) - PER_SHARD_SELECTION


def build_jobs(executor: ExecutorDefinition = in_process_executor) -> list:
    """The per_shard, cross_shard, flyt and proxy jobs, their steps run by `executor`
    (orchestration/execution.py; in process by default)."""
    in_process = executor is in_process_executor
    where = "in the run's process" if in_process else f"each step placed by the {executor.name} executor"
    per_shard = define_asset_job(
        PER_SHARD_JOB,
        selection=PER_SHARD_SELECTION,
        partitions_def=shard_partitions,
        executor_def=executor,
        description=f"Samples, embeddings, every score, the preference pairs and the near-duplicate assignment "
                    f"of the selected shard(s), {where}.",
    )
    cross_shard = define_asset_job(
        CROSS_SHARD_JOB,
        selection=AssetSelection.groups(*CROSS_SHARD_GROUPS) - PER_SHARD_SELECTION - FLYT_SELECTION,
        executor_def=multi_or_in_process_executor if in_process else executor,
        config=CROSS_SHARD_EXECUTION if in_process else None,
        description="Near-duplicate centroids and groups, then every policy's subset, index and audit, over all "
                    "shards " + ("(in the run's process; `execution: {config: {multiprocess: {}}}` runs a process "
                             "per step)." if in_process else f"({where})."),
    )
    learned = define_asset_job(
        FLYT_JOB,
        selection=FLYT_SELECTION,
        executor_def=multi_or_in_process_executor if in_process else executor,
        config=CROSS_SHARD_EXECUTION if in_process else None,
        description="FLYT: train the scorer on the pool (a shard's FLYT score is in per_shard), then the "
                    f"policies over its scores, their indices and audits ({where}).",
    )
    proxy_job = define_asset_job(
        PROXY_JOB,
        selection=AssetSelection.groups(proxy.PROXY_GROUP),
        executor_def=in_process_executor if in_process else executor,
        description="The downstream proxy: a small CLIP trained from scratch on every subset and measured on a "
                    "held-out labelled set (minutes per subset and seed on a CPU).",
    )
    return [per_shard, cross_shard, learned, proxy_job]


observe_crawl_job = define_asset_job(
    OBSERVE_CRAWL_JOB,
    selection=AssetSelection.assets(crawl_shard.key),
    executor_def=in_process_executor,
    description="Observe every registered crawl shard: its files' fingerprint becomes crawl_shard's data version.",
)


def with_automation(assets: list, refresh_cron: str) -> list:
    """Per-shard assets follow their shard's observed crawl files eagerly; cross-shard assets
    refresh on `refresh_cron` (orchestration/schedules.py), FLYT's once materialized by hand."""
    cross_shard = cross_shard_automation(refresh_cron)
    learned = (cross_shard & ~AutomationCondition.missing()).with_label(
        f"{cross_shard.get_label()}, once materialized")

    def condition(spec: AssetSpec, partitioned: bool) -> AutomationCondition:
        if partitioned:
            return PER_SHARD_AUTOMATION
        return learned if spec.group_name in (flyt.FLYT_GROUP, proxy.PROXY_GROUP) else cross_shard

    automated = []
    for item in assets:
        if isinstance(item, AssetsDefinition):
            node_partitioned = item.partitions_def is not None
            item = item.map_asset_specs(lambda spec, p=node_partitioned: spec if spec.automation_condition else
                                        spec.replace_attributes(automation_condition=condition(spec, p)))
        automated.append(item)
    return automated


# build_definitions' settings -> the variables the code location reads them from.
SETTING_VARIABLES = {"crawl": "CLIPSIEVE_CRAWL", "lake": "CLIPSIEVE_LAKE", "model_name": "CLIPSIEVE_MODEL",
                     "pretrained": "CLIPSIEVE_PRETRAINED", "policy_dir": CURATION_FILE_VARIABLES["policy_dir"][0],
                     "checks": CURATION_FILE_VARIABLES["checks"][0], "refresh_cron": "CLIPSIEVE_REFRESH_CRON",
                     "shards_per_run": "CLIPSIEVE_SHARDS_PER_RUN", "embedding_gpus": "CLIPSIEVE_EMBEDDING_GPUS"}


def location_env(**settings: str | Path | None) -> dict[str, str]:
    """The environment in which this module's `defs` equal `build_definitions(**settings)`:
    what a webserver or code server started for those settings needs. Local paths are made
    absolute, as the server's working directory is another."""
    env = {}
    for name, value in settings.items():
        if value is None:
            continue
        value = str(value)
        if "://" not in value and (Path(value).exists() or name in ("crawl", "lake")):
            value = str(Path(value).resolve())
        env[SETTING_VARIABLES[name]] = value
    return env


def build_definitions(policy_dir: str | Path | None = None, checks: str | Path | None = None,
                      refresh_cron: str | None = None, shards_per_run: int | str | None = None,
                      embedding_gpus: float | str | None = None, executor: ExecutorDefinition | None = None,
                      **overrides: str | Path | None) -> Definitions:
    """The code location. Settings come from the environment (each resource's descriptions
    name its variables; $CLIPSIEVE_REFRESH_CRON, $CLIPSIEVE_SHARDS_PER_RUN,
    $CLIPSIEVE_EMBEDDING_GPUS and $CLIPSIEVE_EXECUTOR with $CLIPSIEVE_RAY_ADDRESS for those that
    shape the definitions themselves: orchestration/execution.py), read when this is called;
    arguments override them."""
    resources = build_resources(policy_dir=policy_dir, checks=checks, **overrides)
    refresh_cron = refresh_cron or os.environ.get(SETTING_VARIABLES["refresh_cron"]) or DEFAULT_REFRESH_CRON
    shards_per_run = int(shards_per_run or os.environ.get(SETTING_VARIABLES["shards_per_run"])
                         or DEFAULT_SHARDS_PER_RUN)
    embedding_gpus = float(embedding_gpus if embedding_gpus is not None
                           else os.environ.get(SETTING_VARIABLES["embedding_gpus"]) or 0)
    assets = build_assets(resources["clip"], resources["heads"], resources["files"], shards_per_run, embedding_gpus,
                          resources["preference"])
    jobs = build_jobs(executor if executor is not None else executor_from_env())
    per_shard_job, cross_shard_job = jobs[:2]
    return Definitions(
        assets=with_automation(assets, refresh_cron),
        jobs=[*jobs, observe_crawl_job, demo_crawl],
        sensors=[build_crawl_sensor(observe_crawl_job, cross_shard_job)],
        schedules=[build_refresh_schedule(cross_shard_job, refresh_cron)],
        executor=in_process_executor,  # what an asset launched from the graph runs with
        resources=resources,
    )


defs = build_definitions()
