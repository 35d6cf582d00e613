"""The embeddings' files in the lake: what the embeddings asset writes and every later step reads.

Written as clip-retrieval writes them (float16, L2-normalized, row-aligned):
    shards/<shard>/embeddings/<model>/keys.parquet   key, shard, row — row i of both arrays;
                                                     it commits the version below (metadata)
    shards/<shard>/embeddings/<model>/versions/<version>/img_emb.npy       (n, dim)
    shards/<shard>/embeddings/<model>/versions/<version>/text_emb.npy      (n, dim)
    shards/<shard>/embeddings/<model>/versions/<version>/failures.parquet  key, shard, error — images
                                                     the model could not read
The arrays are written first, into a folder named by their content; keys.parquet, written
last, names it. A rewrite of a shard never removes its keys first, so a reader (or a run
killed halfway) always sees the old embeddings or the new ones, whole, and the shard never
drops out of the pool.
"""

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from resources.lake import LakeResource, embeddings_dir, prune_versions, with_metadata


def as_float32(vectors: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """`vectors` as float32 (into `out` when given). Stored embeddings are float16, and numpy
    widens float16 element by element (about 0.7 G values/s here); torch's vectorized copy
    does it about ten times faster, which matters where tens of GB are widened per run."""
    if vectors.dtype != np.float16:
        if out is None:
            return np.asarray(vectors, dtype=np.float32)
        out[...] = vectors
        return out
    out = np.empty(vectors.shape, np.float32) if out is None else out
    torch.from_numpy(out).copy_(torch.from_numpy(np.ascontiguousarray(vectors)))
    return out


def as_float16(vectors: np.ndarray) -> np.ndarray:
    """float32 `vectors` as float16, through torch's vectorized copy (about three times numpy's
    speed here); float16 ones as they are (contiguous)."""
    if vectors.dtype == np.float16:
        return np.ascontiguousarray(vectors)
    out = np.empty(vectors.shape, np.float16)
    torch.from_numpy(out).copy_(torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)))
    return out


def normalized(vectors: np.ndarray) -> np.ndarray:
    """float32 rows of unit length (stored embeddings are float16: their norms are off by a little)."""
    vectors = as_float32(vectors)
    return np.ascontiguousarray(vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12))


@dataclass
class ShardEmbeddings:
    keys: list[str]
    image: np.ndarray  # (n, dim) float16, normalized
    text: np.ndarray  # (n, dim) float16, normalized
    failures: list[tuple[str, str]]  # (key, error)
    timings: dict[str, float] = field(default_factory=dict)  # seconds: forward, decode_wait, total


EMBEDDINGS_VERSION_KEY = "clipsieve.embeddings_version"


def write_embeddings(lake: LakeResource, shard: str, model_id: str, result: ShardEmbeddings) -> None:
    folder = embeddings_dir(shard, model_id)
    digest = hashlib.sha256(result.image.tobytes() + result.text.tobytes())
    digest.update("\n".join(result.keys).encode())
    version = digest.hexdigest()[:16]
    lake.write_npy(f"{folder}/versions/{version}/img_emb.npy", result.image)
    lake.write_npy(f"{folder}/versions/{version}/text_emb.npy", result.text)
    lake.write_parquet(f"{folder}/versions/{version}/failures.parquet", pa.table({
        "key": pa.array([k for k, _ in result.failures], pa.string()),
        "shard": pa.array([shard] * len(result.failures), pa.string()),
        "error": pa.array([e for _, e in result.failures], pa.string()),
    }))
    previous = committed_version(lake, shard, model_id)
    keys = pa.table({
        "key": pa.array(result.keys, pa.string()),
        "shard": pa.array([shard] * len(result.keys), pa.string()),
        "row": pa.array(np.arange(len(result.keys)), pa.int64()),
    })
    lake.write_parquet(f"{folder}/keys.parquet", with_metadata(keys, {EMBEDDINGS_VERSION_KEY: version}))
    prune_versions(lake, f"{folder}/versions", {version, previous})


def committed_version(lake: LakeResource, shard: str, model_id: str) -> str | None:
    """The version of the shard's embeddings that keys.parquet commits (None: none yet)."""
    path = f"{embeddings_dir(shard, model_id)}/keys.parquet"
    return lake.parquet_metadata(path).get(EMBEDDINGS_VERSION_KEY) if lake.exists(path) else None


def committed_keys(lake: LakeResource, shard: str, model_id: str) -> tuple[pa.Table, str, str]:
    """(keys table, version, the version's folder) of one shard's committed embeddings: the
    arrays in that folder are the ones the keys name, whatever a concurrent rewrite does."""
    folder = embeddings_dir(shard, model_id)
    keys = lake.read_parquet(f"{folder}/keys.parquet")
    version = (keys.schema.metadata or {}).get(EMBEDDINGS_VERSION_KEY.encode())
    if version is None:
        raise ValueError(f"shard {shard}: its embeddings were written by an older clipsieve: materialize "
                         "embeddings for it again")
    return keys, version.decode(), f"{folder}/versions/{version.decode()}"


def load_embeddings(lake: LakeResource, shard: str, model_id: str) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """(keys table, image embeddings, text embeddings) of one shard, as float32."""
    keys, _, files = committed_keys(lake, shard, model_id)
    image = lake.read_npy(f"{files}/img_emb.npy").astype(np.float32)
    text = lake.read_npy(f"{files}/text_emb.npy").astype(np.float32)
    return keys, image, text


def load_image_embeddings(lake: LakeResource, shard: str, model_id: str) -> tuple[pa.Table, np.ndarray]:
    """(keys table, image embeddings as stored: float16) of one shard's committed version."""
    keys, _, files = committed_keys(lake, shard, model_id)
    return keys, lake.read_npy(f"{files}/img_emb.npy")


def embedded_count(lake: LakeResource, shard: str, model_id: str) -> int:
    """Embedded samples of a shard (its keys.parquet footer only)."""
    return lake.parquet_rows(f"{embeddings_dir(shard, model_id)}/keys.parquet")


def embedding_failures(lake: LakeResource, shard: str, model_id: str) -> pa.Table:
    """The committed version's images the model could not read (key, shard, error)."""
    version = committed_version(lake, shard, model_id)
    return lake.read_parquet(f"{embeddings_dir(shard, model_id)}/versions/{version}/failures.parquet")
