"""The per-shard score assets: scores/<name>, one partition per crawl shard.

Wiring only: each asset writes its shard's scores with the `score_shard` of its module
(plain code, no Dagster) and reports the figures it returns, with Dagster's table metadata.
"""

from collections.abc import Callable

import pyarrow as pa
from dagster import AssetExecutionContext, AssetsDefinition, BackfillPolicy, MaterializeResult, asset

from assets.definitions.partitions import for_each_shard, shard_partitions
from assets.definitions.step_resources import CPU_STEP
from assets.definitions.table_metadata import table_metadata
from assets.scores import caption_terms, classifier_heads, clip_similarity, image_hashes, language, quality, toxicity
from resources.clip_model import ClipModelResource
from resources.crawl import CrawlResource
from resources.heads import HEADS, HeadChoice, HeadsResource
from resources.lake import LakeResource


def score_asset(code_version: str, compute_kind: str, batches: BackfillPolicy, deps: tuple[str, ...] = ("samples",),
                **kwargs):
    """The @asset declaration every per-shard score shares: scores/<name>, one partition per
    shard, run in batches of shards as `batches` says."""
    return asset(key_prefix="scores", partitions_def=shard_partitions, deps=list(deps), group_name="scores",
                 code_version=code_version, compute_kind=compute_kind, backfill_policy=batches, op_tags=CPU_STEP,
                 **kwargs)


def each_shard(context: AssetExecutionContext, score: Callable[[str], tuple[pa.Table, dict]]) -> MaterializeResult:
    """`score(shard)` for every shard of the run; each shard's figures and table metadata."""
    def one(shard: str) -> dict:
        table, metadata = score(shard)
        return {**metadata, **table_metadata(table)}

    return for_each_shard(context, one)


def build_language_asset(batches: BackfillPolicy) -> AssetsDefinition:
    @score_asset(language.CODE_VERSION, "fasttext", batches, name="language")
    def language_asset(context: AssetExecutionContext, lake: LakeResource) -> MaterializeResult:
        """Caption language (fastText lid.176) per usable sample."""
        return each_shard(context, lambda shard: language.score_shard(lake, shard))

    return language_asset


def build_quality_asset(batches: BackfillPolicy) -> AssetsDefinition:
    @score_asset(quality.CODE_VERSION, "pyarrow", batches, name="quality")
    def quality_asset(context: AssetExecutionContext, lake: LakeResource) -> MaterializeResult:
        """Caption words and characters, image sides and aspect ratio per usable sample."""
        return each_shard(context, lambda shard: quality.score_shard(lake, shard))

    return quality_asset


def build_image_hashes_asset(batches: BackfillPolicy) -> AssetsDefinition:
    @score_asset(image_hashes.CODE_VERSION, "numpy", batches, name="image_hashes")
    def image_hashes_asset(context: AssetExecutionContext, crawl: CrawlResource,
                           lake: LakeResource) -> MaterializeResult:
        """SHA-256, perceptual hash and 8x8 thumbnail of each usable image."""
        return each_shard(context, lambda shard: image_hashes.score_shard(crawl, lake, shard))

    return image_hashes_asset


def build_toxicity_asset(batches: BackfillPolicy, terms_path: str = toxicity.TERMS_PATH) -> AssetsDefinition:
    """scores/toxicity, flagging the terms in `terms_path` (their digest is in the code version)."""

    @score_asset(toxicity.code_version(terms_path), "numpy", batches, name="toxicity")
    def toxicity_asset(context: AssetExecutionContext, lake: LakeResource) -> MaterializeResult:
        """Caption toxicity probability (alt-profanity-check) and flagged-term count per usable sample."""
        return each_shard(context, lambda shard: toxicity.score_shard(lake, shard, terms_path))

    return toxicity_asset


def build_caption_terms_asset(batches: BackfillPolicy, metadata_path: str = caption_terms.METADATA_PATH,
                              groups_path: str = caption_terms.GROUPS_PATH) -> AssetsDefinition:
    """scores/caption_terms, with the entry list and caption groups in these files."""

    @score_asset(caption_terms.code_version(metadata_path, groups_path), "python", batches, name="caption_terms")
    def caption_terms_asset(context: AssetExecutionContext, lake: LakeResource) -> MaterializeResult:
        """MetaCLIP metadata entries matched by each usable sample's caption, and its caption group."""
        return each_shard(context, lambda shard: caption_terms.score_shard(lake, shard, metadata_path, groups_path))

    return caption_terms_asset


def build_clip_similarity_asset(model_id: str, batches: BackfillPolicy) -> AssetsDefinition:
    @score_asset(f"{clip_similarity.CODE_VERSION}+{model_id}", "numpy", batches, deps=("embeddings",),
                 name="clip_similarity")
    def clip_similarity_asset(context: AssetExecutionContext, lake: LakeResource) -> MaterializeResult:
        """CLIP image-caption cosine similarity per embedded sample (LAION's `similarity`)."""
        return each_shard(context, lambda shard: clip_similarity.score_shard(lake, shard, model_id))

    return clip_similarity_asset


def build_head_asset(name: str, model_id: str, choice: HeadChoice, batches: BackfillPolicy) -> AssetsDefinition:
    """scores/<name> (nsfw, watermark or aesthetic) with the head `choice` names; the choice
    is in the code version."""
    column = HEADS[name][0]

    @score_asset(f"{classifier_heads.CODE_VERSION}+{model_id}+{choice.kind}-{choice.version}", "torch", batches,
                 deps=("embeddings",), name=name,
                 description=f"`{column}` over CLIP image embeddings ({choice.kind} head: {choice.source}).")
    def head_asset(context: AssetExecutionContext, lake: LakeResource, heads: HeadsResource,
                 clip: ClipModelResource) -> MaterializeResult:
        chosen = heads.choose(name, clip.embedding_dim)  # the run's resources, as the launchpad set them
        scorer = classifier_heads.load_scorer(chosen, clip)
        return each_shard(context, lambda shard: classifier_heads.score_shard(lake, shard, name, model_id, chosen,
                                                                              scorer))

    return head_asset


def build_head_assets(model_id: str, heads: HeadsResource, embedding_dim: int | None,
                      batches: BackfillPolicy) -> list[AssetsDefinition]:
    return [build_head_asset(name, model_id, heads.choose(name, embedding_dim), batches) for name in HEADS]
