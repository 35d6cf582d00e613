"""The embeddings asset: CLIP image and caption embeddings of a shard (assets/embeddings.py)."""

import os
import time

from dagster import AssetExecutionContext, AssetsDefinition, BackfillPolicy, MaterializeResult, asset

from assets.definitions.partitions import for_each_shard, shard_batches, shard_partitions
from assets.definitions.step_resources import step_resources
from assets.embeddings import CODE_VERSION, embed_shard
from resources.clip_model import ClipModelResource
from resources.crawl import CrawlResource
from resources.embedding_files import write_embeddings
from resources.lake import LakeResource, embeddings_dir, samples_path

PROGRESS_SECONDS = 30.0  # how often a running embeddings step logs its progress


def build_embeddings_asset(model_id: str, precision: str = "fp32", batches: BackfillPolicy = shard_batches(),
                           gpus: float = 0) -> AssetsDefinition:
    """The embeddings asset for one model; the model id (and a precision setting other than
    fp32, which changes the numbers slightly) is part of its code version. Its step asks an
    executor that places steps (Ray) for `gpus` GPUs and a CPU.

    The version carries the setting (`auto`), not what it resolves to: versions are computed
    where the definitions load, which need not be the machine that runs the step. The
    resolved precision is in each materialization's metadata."""

    @asset(
        name="embeddings",
        partitions_def=shard_partitions,
        deps=["samples"],
        group_name="per_shard",
        code_version=f"{CODE_VERSION}+{model_id}" + ("" if precision == "fp32" else f"+{precision}"),
        compute_kind="open_clip",
        backfill_policy=batches,
        op_tags=step_resources(num_cpus=1, num_gpus=gpus),
    )
    def embeddings(context: AssetExecutionContext, crawl: CrawlResource, lake: LakeResource,
                   clip: ClipModelResource) -> MaterializeResult:
        """CLIP image + text embeddings (fp16, normalized) of the shard's usable samples."""
        if clip.model_id != model_id:
            raise ValueError(f"clip resource is {clip.model_id} but these assets were defined for {model_id}: "
                             "set CLIPSIEVE_MODEL / CLIPSIEVE_PRETRAINED and reload the code location")
        started = time.perf_counter()
        model = clip.load()  # once per process, whatever the number of shards and runs in it
        loading = [time.perf_counter() - started]  # charged to the first shard, then 0

        def one(shard: str) -> dict:
            began, last = time.perf_counter(), [time.perf_counter()]

            def progress(read: int, total: int) -> None:  # a line every PROGRESS_SECONDS
                now = time.perf_counter()
                if now - last[0] >= PROGRESS_SECONDS or read == total:
                    last[0] = now
                    context.log.info(f"embeddings {shard}: {read}/{total} images "
                                     f"({read / max(now - began, 1e-9):.1f}/s)")

            result = embed_shard(crawl, lake.read_parquet(samples_path(shard)), model, clip.embed_options(),
                                 progress)
            write_embeddings(lake, shard, model_id, result)
            total = result.timings["total"]
            load_seconds, loading[0] = loading[0], 0.0
            return {
                "model_id": model_id,
                "precision": model.precision,  # what `auto` resolved to on this worker
                "device": str(model.device),
                # The GPUs the executor gave this step (Ray sets it for a step that asks for one).
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
                "rows": len(result.keys),
                "failures": len(result.failures),
                "dim": int(result.image.shape[1]),
                "path": lake.path(embeddings_dir(shard, model_id)),
                # Where the time went: the model itself vs reading, decoding and bookkeeping.
                "forward_seconds": round(result.timings.get("forward", 0.0), 3),
                "seconds": round(total, 3),
                "pairs_per_second": round(len(result.keys) / total, 1) if total else 0.0,
                # Importing open_clip and building the model, before this shard (0 once loaded):
                # a fixed cost of the process, however many samples follow.
                "model_load_seconds": round(load_seconds, 3),
            }

        return for_each_shard(context, one)

    return embeddings
