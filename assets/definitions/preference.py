"""The preference assets, per shard: caption_candidates (assets/preference/candidates.py) and
preference_pairs (assets/preference/pairs.py)."""

import json

import pyarrow.compute as pc
from dagster import AssetExecutionContext, AssetsDefinition, BackfillPolicy, MaterializeResult, asset

from assets.definitions.partitions import for_each_shard, shard_partitions
from assets.definitions.step_resources import CPU_STEP
from assets.definitions.table_metadata import table_metadata
from assets.preference import candidates, pairs
from resources.clip_model import ClipModelResource
from resources.crawl import CrawlResource
from resources.lake import LakeResource, preference_dir
from resources.preference import PreferenceResource
from resources.versions import text_digest

PREFERENCE_GROUP = "preference"


def build_preference_assets(model_id: str, preference: PreferenceResource, calibrated: dict[str, float],
                            batches: BackfillPolicy) -> list[AssetsDefinition]:
    """caption_candidates and preference_pairs for one model; the candidate sources and the
    rules' values are in their code versions, so a change to them marks the shards stale."""
    rules = preference.rules(calibrated)
    sources_version = text_digest(json.dumps(preference.extra_columns))
    rules_version = text_digest(json.dumps(rules, sort_keys=True))

    @asset(
        partitions_def=shard_partitions,
        deps=["embeddings"],
        group_name=PREFERENCE_GROUP,
        code_version=f"{candidates.CODE_VERSION}+{model_id}+{sources_version}",
        compute_kind="open_clip",
        backfill_policy=batches,
        op_tags=CPU_STEP,
    )
    def caption_candidates(context: AssetExecutionContext, crawl: CrawlResource, lake: LakeResource,
                           clip: ClipModelResource, preference: PreferenceResource) -> MaterializeResult:
        """Each usable image's candidate captions (alt-text, extra columns, the shard's candidates
        file), deduplicated, token-counted and scored by CLIP similarity."""
        model = clip.load()

        def one(shard: str) -> dict:
            result = candidates.write_candidates(crawl, lake, shard, model_id, model, clip.batch_size,
                                                 preference.extra_columns)
            table = result.table
            if result.errors.num_rows:
                context.log.warning(f"{shard}: {result.errors.num_rows} candidate row(s) left out, e.g. "
                                    f"{result.errors.column('reason')[0].as_py()} (all of them in "
                                    f"{preference_dir(shard, model_id)}/candidate_errors.parquet)")
            return {
                "images": len(set(table.column("key").to_pylist())),
                "candidates": table.num_rows,
                "over_token_limit": int(pc.sum(table.column("over_token_limit")).as_py() or 0),
                "errors": result.errors.num_rows,
                "path": lake.path(f"{preference_dir(shard, model_id)}/candidates.parquet"),
                **table_metadata(table),
            }

        return for_each_shard(context, one)

    @asset(
        partitions_def=shard_partitions,
        deps=[caption_candidates, ["scores", "text_in_image"]],
        group_name=PREFERENCE_GROUP,
        code_version=f"{pairs.CODE_VERSION}+{model_id}+{rules_version}",
        compute_kind="duckdb",
        backfill_policy=batches,
        op_tags=CPU_STEP,
        metadata={"rules": rules},
    )
    def preference_pairs(context: AssetExecutionContext, lake: LakeResource,
                         preference: PreferenceResource) -> MaterializeResult:
        """(chosen, rejected) caption pairs per image, by CLIP-DPO's rules; what they leave out
        in dropped.parquet with its reason."""
        run_rules = preference.rules(calibrated)  # the run's resources, as the launchpad set them

        def one(shard: str) -> dict:
            result = pairs.write_pairs(lake, shard, model_id, run_rules)
            reasons = pc.value_counts(result.dropped.column("reason")).to_pylist()
            return {
                "pairs": result.pairs.num_rows,
                "images_with_pairs": len(set(result.pairs.column("key").to_pylist())),
                **{f"dropped/{r['values']}": r["counts"] for r in reasons},
                "rules": run_rules,
                "path": lake.path(f"{preference_dir(shard, model_id)}/pairs.parquet"),
                **table_metadata(result.pairs),
            }

        return for_each_shard(context, one)

    return [caption_candidates, preference_pairs]
