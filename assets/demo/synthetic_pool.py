"""A synthetic pool at any scale, for benchmarks and tests of the cross-shard steps: per-shard
embeddings (clustered unit vectors, float16, in the lake's own format) and image hashes,
with planted exact and near duplicates. No image and no model: millions of samples are
written in minutes.

Vectors lie around `topics` random directions, so k-means and IVF indices meet the structure
real CLIP embeddings have (uniform random vectors have none). A shard's vectors depend only
on (seed, shard number), so a shard can be written alone, later, and its duplicates of the
shard before it are the same.
"""

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from assets.scores.common import write_scores
from resources.embedding_files import ShardEmbeddings, write_embeddings
from resources.lake import LakeResource

THUMBNAIL_BYTES = 64


@dataclass(frozen=True)
class PoolSpec:
    per_shard: int = 10_000
    dim: int = 512
    topics: int = 1_000
    spread: float = 1.0  # noise norm around a topic direction (1.0: cosine about 0.5 within a topic)
    duplicate_share: float = 0.04  # of each shard: half exact copies, half near duplicates
    duplicate_noise: float = 0.6  # a near duplicate's noise norm is drawn up to this (cosine 1 down to 0.86)
    seed: int = 0


def shard_name(number: int) -> str:
    return f"{number:06d}"


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _topics(spec: PoolSpec) -> np.ndarray:
    return _unit(np.random.default_rng([spec.seed, 2**31]).standard_normal((spec.topics, spec.dim)))


@dataclass
class SyntheticShard:
    keys: list[str]
    image: np.ndarray  # float32 unit vectors
    sha256: list[str]
    phash: np.ndarray
    thumbnails: np.ndarray  # uint8 (n, 64)
    duplicate_of: list[tuple[str, str] | None]  # (shard, key) of the planted original
    kind: list[str | None]  # "exact" | "near" | None


def originals(spec: PoolSpec, number: int, topics: np.ndarray) -> SyntheticShard:
    """The shard's samples before any duplicate is planted."""
    rng = np.random.default_rng([spec.seed, number])
    n = spec.per_shard
    chosen = rng.integers(0, spec.topics, n)
    noise = rng.standard_normal((n, spec.dim)) * (spec.spread / np.sqrt(spec.dim))
    image = _unit(topics[chosen] + noise).astype(np.float32)
    shard = shard_name(number)
    keys = [f"{shard}{i:07d}" for i in range(n)]
    sha = [hashlib.sha256(f"{spec.seed}/{shard}/{k}".encode()).hexdigest() for k in keys]
    return SyntheticShard(keys, image, sha, rng.integers(-2**62, 2**62, n),
                          rng.integers(0, 256, (n, THUMBNAIL_BYTES), dtype=np.uint8), [None] * n, [None] * n)


def synthetic_shard(spec: PoolSpec, number: int, topics: np.ndarray | None = None) -> SyntheticShard:
    """Shard `number` with its duplicates planted: each copies a sample of this shard or of the
    shard before it (exact: same bytes, so same hashes and vector; near: a little noise on the
    vector and the thumbnail, other bytes)."""
    topics = _topics(spec) if topics is None else topics
    shard = originals(spec, number, topics)
    earlier = originals(spec, number - 1, topics) if number > 0 else None
    rng = np.random.default_rng([spec.seed, number, 1])
    count = int(spec.per_shard * spec.duplicate_share)
    targets = np.sort(rng.choice(np.arange(spec.per_shard // 2, spec.per_shard), size=count, replace=False))
    for i, row in enumerate(targets):
        # Duplicates go in a shard's second half and copy a first-half sample: every copy's
        # original is as written, in this shard or the one before.
        source = earlier if earlier is not None and rng.random() < 0.5 else shard
        of = int(rng.integers(0, spec.per_shard // 2))
        exact = i % 2 == 0
        vector = source.image[of]
        if not exact:
            noise = rng.uniform(0, spec.duplicate_noise) / np.sqrt(spec.dim)
            vector = _unit((vector + rng.standard_normal(spec.dim) * noise)[None])[0]
        shard.image[row] = vector
        shard.thumbnails[row] = source.thumbnails[of] if exact else np.clip(
            source.thumbnails[of].astype(int) + rng.integers(-3, 4, THUMBNAIL_BYTES), 0, 255).astype(np.uint8)
        if exact:
            shard.sha256[row], shard.phash[row] = source.sha256[of], source.phash[of]
        shard.duplicate_of[row] = (shard_name(number - 1) if source is earlier else shard_name(number),
                                   source.keys[of])
        shard.kind[row] = "exact" if exact else "near"
    return shard


def write_synthetic_shard(lake: LakeResource, spec: PoolSpec, number: int, model_id: str,
                          topics: np.ndarray | None = None) -> pa.Table:
    """Write shard `number`'s embeddings and scores/image_hashes; its planted duplicates
    (key, shard, duplicate_of_shard, duplicate_of, kind)."""
    data = synthetic_shard(spec, number, topics)
    name = shard_name(number)
    rng = np.random.default_rng([spec.seed, number, 2])
    text = _unit(data.image + rng.standard_normal(data.image.shape) * (1.2 / np.sqrt(spec.dim)))
    write_embeddings(lake, name, model_id, ShardEmbeddings(data.keys, data.image.astype(np.float16),
                                                           text.astype(np.float16), []))
    n = len(data.keys)
    write_scores(lake, name, "image_hashes", pa.table({
        "key": pa.array(data.keys, pa.string()),
        "shard": pa.array([name] * n, pa.string()),
        "sha256": pa.array(data.sha256, pa.string()),
        "phash": pa.array(data.phash, pa.int64()),
        "thumbnail": pa.array([t.tobytes() for t in data.thumbnails], pa.binary(THUMBNAIL_BYTES)),
        "hash_error": pa.array([None] * n, pa.string()),
    }))
    planted = [i for i, kind in enumerate(data.kind) if kind]
    return pa.table({
        "key": pa.array([data.keys[i] for i in planted], pa.string()),
        "shard": pa.array([name] * len(planted), pa.string()),
        "duplicate_of_shard": pa.array([data.duplicate_of[i][0] for i in planted], pa.string()),
        "duplicate_of": pa.array([data.duplicate_of[i][1] for i in planted], pa.string()),
        "kind": pa.array([data.kind[i] for i in planted], pa.string()),
    })
