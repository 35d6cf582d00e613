"""indices/<policy>: a faiss kNN index over the image embeddings of a subset's members.

    indices/<policy>/<model>/image.index       faiss index, inner product over normalized
                                               vectors (= cosine), row i is member i
    indices/<policy>/<model>/keys.parquet      key, shard of each index row
    indices/<policy>/<model>/index_info.json   factory, count, dim, memory_bytes,
                                               build_seconds, recall_at_10

recall@10 is measured against exact search on a sample of members used as queries.
"""

import os
import tempfile
import time

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from dagster import AssetExecutionContext, AssetKey, AssetsDefinition, MaterializeResult, asset

from assets.embeddings import load_embeddings
from resources.lake import LakeResource, index_dir, members_path

CODE_VERSION = "1"
FACTORY = "Flat"


def gather_image_embeddings(lake: LakeResource, model_id: str, members: pa.Table) -> tuple[pa.Table, np.ndarray]:
    """(key, shard) rows and float32 image embeddings of `members`, in members' order."""
    keys, chunks = [], []
    for shard in sorted(set(members.column("shard").to_pylist())):
        wanted = members.filter(pc.equal(members.column("shard"), shard)).column("key").to_pylist()
        shard_keys, image, _ = load_embeddings(lake, shard, model_id)
        row_of = dict(zip(shard_keys.column("key").to_pylist(), shard_keys.column("row").to_pylist()))
        missing = [k for k in wanted if k not in row_of]
        if missing:
            raise ValueError(f"shard {shard}: {len(missing)} member(s) have no embedding, e.g. {missing[:3]}")
        chunks.append(image[[row_of[k] for k in wanted]])
        keys.append(pa.table({"key": pa.array(wanted, pa.string()), "shard": pa.array([shard] * len(wanted))}))
    if not chunks:
        return pa.table({"key": pa.array([], pa.string()), "shard": pa.array([], pa.string())}), np.zeros((0, 0))
    return pa.concat_tables(keys), np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)


def recall_at_k(index: faiss.Index, vectors: np.ndarray, k: int = 10, queries: int = 500, seed: int = 0) -> float:
    """Share of the exact top-k that the index returns, over a sample of member queries.

    Ties count: a returned vector scoring at least the exact k-th score is a hit, so
    duplicate vectors in either order do not lower the figure.
    """
    if len(vectors) == 0:
        return 1.0
    rng = np.random.default_rng(seed)
    sample = vectors[rng.choice(len(vectors), size=min(queries, len(vectors)), replace=False)]
    k = min(k, len(vectors))
    exact = sample @ vectors.T
    kth = -np.partition(-exact, k - 1, axis=1)[:, k - 1]
    _, found = index.search(sample, k)
    found_scores = np.take_along_axis(exact, np.maximum(found, 0), axis=1)
    hits = ((found >= 0) & (found_scores >= kth[:, None] - 1e-5)).sum()
    return float(hits / (len(sample) * k))


def build_index(vectors: np.ndarray) -> tuple[faiss.Index, dict]:
    """An inner-product index over normalized vectors, with its measured figures."""
    dim = vectors.shape[1] if vectors.size else 0
    started = time.perf_counter()
    index = faiss.index_factory(max(dim, 1), FACTORY, faiss.METRIC_INNER_PRODUCT)
    if len(vectors):
        index.add(vectors)
    build_seconds = time.perf_counter() - started
    info = {
        "factory": FACTORY,
        "metric": "inner_product",
        "count": int(index.ntotal),
        "dim": int(dim),
        "memory_bytes": int(faiss.serialize_index(index).nbytes),
        "build_seconds": round(build_seconds, 4),
        "recall_at_10": recall_at_k(index, vectors),
    }
    return index, info


def write_index(lake: LakeResource, folder: str, index: faiss.Index, keys: pa.Table, info: dict) -> None:
    # faiss writes to a file name; go through a local temporary so any lake (or URL) works.
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "image.index")
        faiss.write_index(index, local)
        with open(local, "rb") as f:
            lake.write_bytes(f"{folder}/image.index", f.read())
    lake.write_parquet(f"{folder}/keys.parquet", keys)
    lake.write_json(f"{folder}/index_info.json", info)


def read_index(lake: LakeResource, folder: str) -> tuple[faiss.Index, pa.Table]:
    data = np.frombuffer(lake.read_bytes(f"{folder}/image.index"), dtype=np.uint8)
    return faiss.deserialize_index(data), lake.read_parquet(f"{folder}/keys.parquet")


def search(index: faiss.Index, keys: pa.Table, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
    """(key, score) of the k nearest members for each query vector."""
    scores, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, index.ntotal))
    names = keys.column("key").to_pylist()
    return [[(names[r], float(s)) for r, s in zip(row, score) if r >= 0] for row, score in zip(rows, scores)]


def build_index_asset(policy: str, model_id: str) -> AssetsDefinition:
    @asset(
        name=policy,
        key_prefix="indices",
        deps=[AssetKey(["subsets", policy]), AssetKey("embeddings")],
        group_name="indices",
        code_version=f"{CODE_VERSION}+{model_id}",
        compute_kind="faiss",
        description=f"faiss kNN index over the image embeddings of subsets/{policy}.",
    )
    def index_asset(context: AssetExecutionContext, lake: LakeResource) -> MaterializeResult:
        members = lake.read_parquet(members_path(policy))
        keys, vectors = gather_image_embeddings(lake, model_id, members)
        index, info = build_index(vectors)
        folder = index_dir(policy, model_id)
        write_index(lake, folder, index, keys, info)
        return MaterializeResult(metadata={**info, "model_id": model_id, "path": lake.path(folder)})

    return index_asset
