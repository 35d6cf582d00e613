"""embeddings: CLIP image and text embeddings of a shard's usable samples.

Written as clip-retrieval writes them (float16, L2-normalized, row-aligned):
    shards/<shard>/embeddings/<model>/img_emb.npy    (n, dim)
    shards/<shard>/embeddings/<model>/text_emb.npy   (n, dim)
    shards/<shard>/embeddings/<model>/keys.parquet   key, shard, row — row i of both arrays
    shards/<shard>/embeddings/<model>/failures.parquet  key, shard, error — images the model could not read
"""

import io
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from dagster import AssetExecutionContext, AssetsDefinition, MaterializeResult, asset
from PIL import Image

from assets.scores.common import for_each_shard
from orchestration.partitions import SHARD_BATCHES, shard_partitions
from resources.clip_model import ClipModelResource, LoadedClip
from resources.crawl import CrawlResource
from resources.lake import LakeResource, embeddings_dir, samples_path

CODE_VERSION = "1"


@dataclass
class ShardEmbeddings:
    keys: list[str]
    image: np.ndarray  # (n, dim) float16, normalized
    text: np.ndarray  # (n, dim) float16, normalized
    failures: list[tuple[str, str]]  # (key, error)


@torch.inference_mode()
def encode_texts(clip: LoadedClip, captions: list[str], batch_size: int) -> np.ndarray:
    """Normalized text embeddings; each distinct caption is encoded once."""
    unique, inverse = np.unique(np.asarray(captions, dtype=object).astype(str), return_inverse=True)
    chunks = []
    for start in range(0, len(unique), batch_size):
        tokens = clip.tokenizer(list(unique[start:start + batch_size])).to(clip.device)
        chunks.append(clip.model.encode_text(tokens, normalize=True).float().cpu())
    encoded = torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), np.float32)
    return encoded[inverse] if len(captions) else encoded


def _decode(data: bytes, size: int) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (size, size))  # JPEG: let the decoder downscale, far cheaper than decoding full size
    return image.convert("RGB")


@torch.inference_mode()
def encode_images(clip: LoadedClip, images: Iterable[tuple[str, bytes]],
                  batch_size: int) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
    """Normalized embeddings of (key, image bytes) pairs, streamed in batches.

    Returns (embedded keys, embeddings in that order, failures as (key, error)).
    """
    input_size = clip.model.visual.image_size
    side = input_size[0] if isinstance(input_size, (tuple, list)) else int(input_size)
    done, chunks, failures = [], [], []
    batch_keys, batch = [], []

    def flush() -> None:
        if batch:
            pixels = torch.stack(batch).to(clip.device, dtype=clip.dtype)
            chunks.append(clip.model.encode_image(pixels, normalize=True).float().cpu())
            done.extend(batch_keys)
            batch_keys.clear()
            batch.clear()

    for key, data in images:
        try:
            batch.append(clip.preprocess(_decode(data, side)))
            batch_keys.append(key)
        except Exception as error:  # noqa: BLE001 - a bad image is recorded, not fatal
            failures.append((key, f"{type(error).__name__}: {error}"))
        if len(batch) == batch_size:
            flush()
    flush()
    embedded = torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), np.float32)
    return done, embedded, failures


def embed_shard(crawl: CrawlResource, samples: pa.Table, clip: LoadedClip, batch_size: int) -> ShardEmbeddings:
    """Embed every sample whose image_status is ok, in the samples' order.

    Images stream from the tar batch by batch (memory stays flat whatever the shard
    size); captions are encoded for the images that embedded.
    """
    usable = samples.filter(pc.equal(samples.column("image_status"), "ok"))
    keys = usable.column("key").to_pylist()
    key_of = dict(zip(usable.column("tar_member").to_pylist(), keys))
    streamed: Iterable[tuple[str, bytes]] = ()
    if keys:
        shard = usable.column("shard")[0].as_py()
        streamed = ((key_of[name], data) for name, data in crawl.iter_tar(shard, wanted=set(key_of)))
    done, image_embeddings, failures = encode_images(clip, streamed, batch_size)
    # Tar order is arbitrary: put rows back in the samples' order.
    position = {k: i for i, k in enumerate(keys)}
    order = np.argsort([position[k] for k in done], kind="stable")
    done = [done[i] for i in order]
    seen = set(done) | {k for k, _ in failures}
    failures += [(k, "image missing from the tar at embedding time") for k in keys if k not in seen]
    caption_of = dict(zip(keys, usable.column("caption").to_pylist()))
    text_embeddings = encode_texts(clip, [caption_of[k] or "" for k in done], batch_size)
    if done:
        image_embeddings = image_embeddings[order]
    else:
        dim = encode_texts(clip, [""], 1).shape[1]
        image_embeddings = text_embeddings = np.zeros((0, dim), np.float32)
    return ShardEmbeddings(done, image_embeddings.astype(np.float16), text_embeddings.astype(np.float16), failures)


def write_embeddings(lake: LakeResource, shard: str, model_id: str, result: ShardEmbeddings) -> None:
    folder = embeddings_dir(shard, model_id)
    lake.write_npy(f"{folder}/img_emb.npy", result.image)
    lake.write_npy(f"{folder}/text_emb.npy", result.text)
    lake.write_parquet(f"{folder}/failures.parquet", pa.table({
        "key": pa.array([k for k, _ in result.failures], pa.string()),
        "shard": pa.array([shard] * len(result.failures), pa.string()),
        "error": pa.array([e for _, e in result.failures], pa.string()),
    }))
    # keys.parquet last: its presence means the arrays beside it are complete.
    lake.write_parquet(f"{folder}/keys.parquet", pa.table({
        "key": pa.array(result.keys, pa.string()),
        "shard": pa.array([shard] * len(result.keys), pa.string()),
        "row": pa.array(np.arange(len(result.keys)), pa.int64()),
    }))


def load_embeddings(lake: LakeResource, shard: str, model_id: str) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """(keys table, image embeddings, text embeddings) of one shard, as float32."""
    folder = embeddings_dir(shard, model_id)
    keys = lake.read_parquet(f"{folder}/keys.parquet")
    image = lake.read_npy(f"{folder}/img_emb.npy").astype(np.float32)
    text = lake.read_npy(f"{folder}/text_emb.npy").astype(np.float32)
    return keys, image, text


def build_embeddings_asset(model_id: str) -> AssetsDefinition:
    """The embeddings asset for one model; the model id is part of its code version."""

    @asset(
        name="embeddings",
        partitions_def=shard_partitions,
        deps=["samples"],
        group_name="per_shard",
        code_version=f"{CODE_VERSION}+{model_id}",
        compute_kind="open_clip",
        backfill_policy=SHARD_BATCHES,
    )
    def embeddings(context: AssetExecutionContext, crawl: CrawlResource, lake: LakeResource,
                   clip: ClipModelResource) -> MaterializeResult:
        """CLIP image + text embeddings (fp16, normalized) of the shard's usable samples."""
        if clip.model_id != model_id:
            raise ValueError(f"clip resource is {clip.model_id} but these assets were defined for {model_id}: "
                             "set CLIPSIEVE_MODEL / CLIPSIEVE_PRETRAINED and reload the code location")
        model = clip.load()  # once per run, whatever the number of shards in it

        def one(shard: str) -> dict:
            result = embed_shard(crawl, lake.read_parquet(samples_path(shard)), model, clip.batch_size)
            write_embeddings(lake, shard, model_id, result)
            return {
                "model_id": model_id,
                "rows": len(result.keys),
                "failures": len(result.failures),
                "dim": int(result.image.shape[1]),
                "path": lake.path(embeddings_dir(shard, model_id)),
            }

        return for_each_shard(context, one)

    return embeddings
