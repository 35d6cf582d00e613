"""embeddings: CLIP image and text embeddings of a shard's usable samples, computed with
the model (their files in the lake: resources/embedding_files.py)."""

import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from assets.crawl.pixels import pixel_batches
from resources.clip_model import EmbedOptions, LoadedClip
from resources.crawl import CrawlResource
from resources.embedding_files import ShardEmbeddings

CODE_VERSION = "3"


def _autocast(clip: LoadedClip):
    """Mixed precision for open_clip's amp / amp_bf16 (weights stay fp32); else nothing."""
    if clip.precision.startswith("amp"):
        dtype = torch.bfloat16 if clip.precision.endswith("bf16") or clip.device.type == "cpu" else torch.float16
        return torch.autocast(clip.device.type, dtype=dtype)
    return contextlib.nullcontext()


def _trimmable(model: Any) -> bool:
    """open_clip's CLIP class with a causal text tower pooled at the EOT token: tokens after
    the longest caption's EOT are padding that no earlier position attends to."""
    return all(hasattr(model, a) for a in ("token_embedding", "positional_embedding", "attn_mask", "ln_final")) \
        and getattr(model, "text_pool_type", None) == "argmax" and model.attn_mask is not None


def _unit(features: torch.Tensor) -> torch.Tensor:
    """L2-normalized in float32: normalizing in bf16 leaves norms off by up to 0.3%."""
    return torch.nn.functional.normalize(features.float(), dim=-1)


def _text_features(model: Any, tokens: torch.Tensor, trim: bool) -> torch.Tensor:
    """encode_text (normalized, float32), on sequences cut to the longest caption in the
    batch when possible.

    Same arithmetic as open_clip's CLIP.encode_text with the positional embedding and the
    causal mask sliced to that length; text at 77 tokens costs ~5x what a 15-token caption needs.
    """
    if not (trim and _trimmable(model)):
        return _unit(model.encode_text(tokens))
    length = max(int((tokens != 0).sum(dim=1).max()), 1)
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    projection = model.text_projection
    if projection is not None:
        x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
    return _unit(x)


@torch.inference_mode()
def encode_texts(clip: LoadedClip, captions: list[str], batch_size: int, trim: bool = True,
                 timings: dict[str, float] | None = None) -> np.ndarray:
    """Normalized text embeddings; each distinct caption is encoded once, shortest first so
    each batch is cut to similar lengths."""
    unique, inverse = np.unique(np.asarray(captions, dtype=object).astype(str), return_inverse=True)
    tokens = clip.tokenizer(list(unique)) if len(unique) else None
    order = torch.argsort((tokens != 0).sum(dim=1), stable=True) if tokens is not None else torch.zeros(0)
    encoded = torch.zeros((0, 0))
    started = time.perf_counter()
    chunks = []
    with _autocast(clip):
        for start in range(0, len(unique), batch_size):
            batch = tokens[order[start:start + batch_size]].to(clip.device)
            chunks.append(_text_features(clip.model, batch, trim).cpu())
    if chunks:
        encoded = torch.empty((len(unique), chunks[0].shape[1]))
        encoded[order] = torch.cat(chunks)
    if timings is not None:
        timings["forward"] = timings.get("forward", 0.0) + time.perf_counter() - started
    return encoded.numpy()[inverse] if len(captions) else encoded.numpy()


@torch.inference_mode()
def encode_images(clip: LoadedClip, images: Iterable[tuple[str, bytes]], batch_size: int,
                  decode_threads: int = 0, timings: dict[str, float] | None = None, decode_ahead: bool = False,
                  progress: Callable[[int], None] | None = None,
                  ) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
    """Normalized embeddings of (key, image bytes) pairs, streamed in batches.

    Returns (embedded keys, embeddings in that order, failures as (key, error)).
    `progress(images read so far)` is called after each batch.
    """
    done, chunks, failures = [], [], []
    forward = 0.0
    input_size = clip.model.visual.image_size
    side = input_size[0] if isinstance(input_size, (tuple, list)) else int(input_size)
    memory_format = torch.channels_last if clip.channels_last else torch.contiguous_format
    # Under autocast the model takes float32 pixels; else pixels come in the weights' dtype.
    dtype = torch.float32 if clip.precision.startswith("amp") else clip.dtype
    batches = pixel_batches(clip.preprocess, side, images, batch_size, decode_threads, decode_ahead, dtype)
    with _autocast(clip):
        for keys, pixels, failed in batches:
            failures.extend(failed)
            if pixels is not None:
                started = time.perf_counter()
                batch = pixels.to(clip.device, dtype=clip.dtype, memory_format=memory_format, non_blocking=True)
                chunks.append(_unit(clip.model.encode_image(batch)).cpu())
                forward += time.perf_counter() - started
                done.extend(keys)
            if progress is not None:
                progress(len(done) + len(failures))
    if timings is not None:
        timings["forward"] = timings.get("forward", 0.0) + forward
    embedded = torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), np.float32)
    return done, embedded, failures


def embed_shard(crawl: CrawlResource, samples: pa.Table, clip: LoadedClip,
                options: EmbedOptions | None = None,
                progress: Callable[[int, int], None] | None = None) -> ShardEmbeddings:
    """Embed every sample whose image_status is ok, in the samples' order.

    Images stream from the tar batch by batch (memory stays flat whatever the shard
    size); captions are encoded for the images that embedded. `progress(images read,
    images to read)` is called after each batch.
    """
    options = options or EmbedOptions()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    usable = samples.filter(pc.equal(samples.column("image_status"), "ok"))
    keys = usable.column("key").to_pylist()
    key_of = dict(zip(usable.column("tar_member").to_pylist(), keys))
    streamed: Iterable[tuple[str, bytes]] = ()
    if keys:
        shard = usable.column("shard")[0].as_py()
        streamed = ((key_of[name], data) for name, data in crawl.iter_tar(shard, wanted=set(key_of)))
    done, image_embeddings, failures = encode_images(
        clip, streamed, options.batch_size, options.decode_threads, timings, options.decode_ahead,
        None if progress is None else lambda read: progress(read, len(keys)))
    # Tar order is arbitrary: put rows back in the samples' order.
    position = {k: i for i, k in enumerate(keys)}
    order = np.argsort([position[k] for k in done], kind="stable")
    done = [done[i] for i in order]
    seen = set(done) | {k for k, _ in failures}
    failures += [(k, "image missing from the tar at embedding time") for k in keys if k not in seen]
    caption_of = dict(zip(keys, usable.column("caption").to_pylist()))
    text_embeddings = encode_texts(clip, [caption_of[k] or "" for k in done], options.batch_size,
                                   options.trim_text, timings)
    if done:
        image_embeddings = image_embeddings[order]
    else:
        dim = encode_texts(clip, [""], 1).shape[1]
        image_embeddings = text_embeddings = np.zeros((0, dim), np.float32)
    timings["total"] = time.perf_counter() - started
    return ShardEmbeddings(done, image_embeddings.astype(np.float16), text_embeddings.astype(np.float16), failures,
                           timings)
