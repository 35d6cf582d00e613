"""<policy>_index: a faiss kNN index over the image embeddings of a subset's members.

    indices/<policy>/<model>/index_info.json          factory, search_params, count, dim,
                                                      memory_bytes, build_seconds, recall_at_10,
                                                      subset_version, and `version`: it commits
    indices/<policy>/<model>/versions/<version>/image.index   faiss index, inner product over
                                                      normalized vectors (= cosine); row i is member i
    indices/<policy>/<model>/versions/<version>/keys.parquet  key, shard of each index row

The index files are written into a folder named by their content, then index_info.json
names it: a reader sees the old index or the new one, whole. `subset_version` is the
subset version it covers; `clipsieve search` refuses an index that covers another version
than the committed subset's.

A new crawl shard grows the existing index (its members' vectors are added; an IVF keeps
its trained quantizer) unless members left the subset, the index type changes with the
size, or an IVF's new vectors drifted from its centroids; then it is rebuilt. The
metadata says which (`build_mode`, `rebuild_reason`).

The index type is chosen as autofaiss chooses it, from the vector count and a memory
budget: exact "Flat" for small sets, "HNSW32" while the vectors fit the budget
comfortably, "IVF<nlist>,Flat" then "IVF<nlist>,PQ<m>" (compressed codes) as the set
grows. Search parameters (nprobe, efSearch) are tuned on held-out queries — the text
embeddings of a sample of members, which are not in the index — to the target recall,
and recall@10 is measured on them against exact search.
"""

import hashlib
import math
import time

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from assets.embeddings import encode_images, encode_texts
from resources.clip_model import LoadedClip
from resources.embedding_files import load_embeddings
from resources.indexing import IndexSettings, read_index, write_index
from resources.lake import LakeResource, committed_subset, index_dir, members_path

CODE_VERSION = "3"


def choose_factory(count: int, dim: int, memory_budget_bytes: int) -> str:
    """The faiss factory string for `count` vectors of `dim` floats within the budget."""
    flat_bytes = count * dim * 4
    if count <= 20_000 and flat_bytes <= memory_budget_bytes:
        return "Flat"
    if count <= 1_000_000 and flat_bytes * 2 <= memory_budget_bytes:
        return "HNSW32"  # vectors plus ~32 links of 8 bytes each per vector
    nlist = 2 ** int(round(math.log2(max(64, min(65536, 4 * math.sqrt(count))))))
    if flat_bytes * 1.1 <= memory_budget_bytes:
        return f"IVF{nlist},Flat"
    for m in (dim // 2, dim // 4, dim // 8, dim // 16):
        if m >= 4 and dim % m == 0 and count * (m + 8) + nlist * dim * 4 <= memory_budget_bytes:
            return f"IVF{nlist},PQ{m}"
    raise ValueError(f"{count} vectors of dim {dim} do not fit {memory_budget_bytes} bytes even as IVF-PQ")


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    return exact.search(queries, k)


def recall_at_k(index: faiss.Index, queries: np.ndarray, truth: tuple[np.ndarray, np.ndarray], k: int = 10) -> float:
    """Share of the exact top-k the index returns. Ties count: a returned vector scoring at
    least the exact k-th score is a hit, so equal vectors in either order do not lower it."""
    kth = truth[0][:, k - 1]
    scores, found = index.search(queries, k)
    hits = ((found >= 0) & (scores >= kth[:, None] - 1e-4)).sum(axis=1)
    return float(np.minimum(hits, k).sum() / (len(queries) * k))


def _candidate_params(factory: str) -> list[str]:
    if factory.startswith("HNSW"):
        return [f"efSearch={e}" for e in (16, 32, 64, 128, 256, 512)]
    if factory.startswith("IVF"):
        nlist = int(factory.split(",")[0][3:])
        return [f"nprobe={p}" for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if p <= nlist]
    return [""]


def tune(index: faiss.Index, factory: str, queries: np.ndarray, truth, target: float, k: int) -> tuple[str, float]:
    """The cheapest search parameters reaching `target` recall@k (or the best tried)."""
    best = ("", 0.0)
    space = faiss.ParameterSpace()
    for params in _candidate_params(factory):
        if params:
            space.set_index_parameters(index, params)
        recall = recall_at_k(index, queries, truth, k)
        best = max(best, (params, recall), key=lambda pair: pair[1])
        if recall >= target:
            return params, recall
    if best[0]:
        space.set_index_parameters(index, best[0])
    return best


def _measure(index: faiss.Index, factory: str, vectors: np.ndarray, queries: np.ndarray,
             settings: IndexSettings) -> tuple[str, float]:
    """Tune the search parameters on `queries` and return (parameters, recall@10)."""
    if not len(vectors) or not len(queries):
        return "", 1.0
    k = min(10, len(vectors))
    return tune(index, factory, queries, exact_neighbours(vectors, queries, k), settings.target_recall, k)


def _centroid_similarity(index: faiss.Index, vectors: np.ndarray) -> float | None:
    """Mean similarity of vectors to their nearest IVF centroid (None for other index types)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None or not len(vectors):
        return None
    return float(ivf.quantizer.search(vectors, 1)[0].mean())


def build_index(vectors: np.ndarray, queries: np.ndarray, settings: IndexSettings = IndexSettings(),
                seed: int = 0) -> tuple[faiss.Index, dict]:
    """An inner-product index over normalized `vectors`, tuned and measured on `queries`."""
    count, dim = vectors.shape
    factory = choose_factory(count, dim, settings.memory_budget_bytes)
    started = time.perf_counter()
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        sample = vectors[rng.choice(count, size=min(count, 256 * 64 * 16), replace=False)]
        index.train(sample)
    index.add(vectors)
    build_seconds = time.perf_counter() - started
    params, recall = _measure(index, factory, vectors, queries, settings)
    return index, {
        "factory": factory,
        "search_params": params,
        "metric": "inner_product",
        "count": int(count),
        "dim": int(dim),
        "memory_bytes": int(faiss.serialize_index(index).nbytes),
        "build_seconds": round(build_seconds, 4),
        "recall_at_10": recall,
        "recall_queries": int(len(queries)),
        "centroid_similarity": _centroid_similarity(index, vectors),
        "build_mode": "rebuilt",
    }


DRIFT_TOLERANCE = 0.05  # new vectors this much further from their IVF centroids than at training: retrain


def update_index(previous: tuple[faiss.Index, pa.Table, dict] | None, keys: pa.Table, vectors: np.ndarray,
                 queries: np.ndarray, settings: IndexSettings = IndexSettings(),
                 shard_versions: dict[str, str] | None = None) -> tuple[faiss.Index, pa.Table, dict]:
    """Grow the previous index by the new members' vectors when that is sound, else rebuild.

    Growing needs every previous member still in the subset with unchanged embeddings (its
    shard's digest in `shard_versions`), the same index type for the new size, and, for
    IVF, new vectors about as close to the trained centroids as the training vectors were
    (no drift). `build_mode` and `rebuild_reason` say what happened.
    """
    shard_versions = shard_versions or {}
    reason = "no previous index"
    if previous is not None:
        index, old_keys, old_info = previous
        position = {k: i for i, k in enumerate(keys.column("key").to_pylist())}
        old = old_keys.column("key").to_pylist()
        factory = choose_factory(len(position), vectors.shape[1], settings.memory_budget_bytes)
        changed = [s for s, v in old_info.get("shard_versions", {}).items() if shard_versions.get(s, v) != v]
        if not set(old) <= set(position):
            reason = "members left the subset"
        elif changed:
            reason = f"embeddings of shard(s) {', '.join(sorted(changed))} changed"
        elif factory != old_info.get("factory") or vectors.shape[1] != old_info.get("dim"):
            reason = f"index type changes to {factory}"
        else:
            kept = set(old)
            added = [i for k, i in position.items() if k not in kept]
            trained = old_info.get("centroid_similarity")
            fresh = _centroid_similarity(index, vectors[added])
            if trained is not None and fresh is not None and fresh < trained - DRIFT_TOLERANCE:
                reason = f"drift: new vectors' centroid similarity {fresh:.3f} vs {trained:.3f} at training"
            else:
                started = time.perf_counter()
                if added:
                    index.add(np.ascontiguousarray(vectors[added]))
                seconds = time.perf_counter() - started
                order = [position[k] for k in old] + added
                params, recall = _measure(index, factory, vectors[order], queries, settings)
                info = {**old_info, "search_params": params, "count": int(index.ntotal), "recall_at_10": recall,
                        "memory_bytes": int(faiss.serialize_index(index).nbytes), "build_seconds": round(seconds, 4),
                        "build_mode": "grown", "added": len(added), "recall_queries": int(len(queries)),
                        "shard_versions": {**old_info.get("shard_versions", {}), **shard_versions}}
                info.pop("rebuild_reason", None)
                return index, pa.concat_tables([old_keys, keys.take(pa.array(added, pa.int64()))]), info
    index, info = build_index(vectors, queries, settings)
    return index, keys, {**info, "rebuild_reason": reason, "shard_versions": shard_versions}


def gather_embeddings(lake: LakeResource, model_id: str, members: pa.Table,
                      versions: dict[str, str] | None = None) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """(key, shard) rows and float32 image and text embeddings of `members`, in members' order.

    `versions`, when given, receives a digest of each shard's image embeddings.
    """
    keys, images, texts = [], [], []
    for shard in sorted(set(members.column("shard").to_pylist())):
        wanted = members.filter(pc.equal(members.column("shard"), shard)).column("key").to_pylist()
        shard_keys, image, text = load_embeddings(lake, shard, model_id)
        row_of = dict(zip(shard_keys.column("key").to_pylist(), shard_keys.column("row").to_pylist()))
        missing = [k for k in wanted if k not in row_of]
        if missing:
            raise ValueError(f"shard {shard}: {len(missing)} member(s) have no embedding, e.g. {missing[:3]}")
        rows = [row_of[k] for k in wanted]
        if versions is not None:
            versions[shard] = hashlib.sha256(image.tobytes()).hexdigest()[:16]
        images.append(image[rows])
        texts.append(text[rows])
        keys.append(pa.table({"key": pa.array(wanted, pa.string()), "shard": pa.array([shard] * len(wanted))}))
    if not keys:
        empty = pa.table({"key": pa.array([], pa.string()), "shard": pa.array([], pa.string())})
        return empty, np.zeros((0, 1), np.float32), np.zeros((0, 1), np.float32)

    def normalized(chunks: list[np.ndarray]) -> np.ndarray:
        array = np.concatenate(chunks).astype(np.float32)
        return np.ascontiguousarray(array / np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12))

    return pa.concat_tables(keys), normalized(images), normalized(texts)


def held_out_queries(text: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """Text embeddings of a sample of members: queries that are not themselves indexed."""
    rng = np.random.default_rng(seed)
    return np.ascontiguousarray(text[rng.choice(len(text), size=min(count, len(text)), replace=False)])


def search(index: faiss.Index, keys: pa.Table, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
    """(key, score) of the k nearest members for each query vector."""
    scores, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, index.ntotal))
    names = keys.column("key").to_pylist()
    return [[(names[r], float(s)) for r, s in zip(row, score) if r >= 0] for row, score in zip(rows, scores)]


def encode_query(clip: LoadedClip, text: str | None = None, image: bytes | None = None) -> np.ndarray:
    """A (1, dim) normalized query: a caption (text -> image search) or an image (image -> image)."""
    if (text is None) == (image is None):
        raise ValueError("give a text or an image to search with, not both")
    if text is not None:
        return encode_texts(clip, [text], 1)
    done, vectors, failures = encode_images(clip, [("query", image)], 1)
    if failures:
        raise ValueError(f"query image unreadable: {failures[0][1]}")
    return vectors


def index_subset(lake: LakeResource, policy: str, model_id: str, settings: IndexSettings) -> dict:
    """Grow or rebuild the policy's index over its committed members and commit it; its info."""
    members = lake.read_parquet(members_path(policy))
    subset_version = (committed_subset(lake, policy) or {}).get("version")
    versions: dict[str, str] = {}
    keys, image, text = gather_embeddings(lake, model_id, members, versions)
    folder = index_dir(policy, model_id)
    info_path = f"{folder}/index_info.json"
    previous = None
    if lake.exists(info_path) and "version" in (old_info := lake.read_json(info_path)):
        previous = (*read_index(lake, folder), old_info)
    index, keys, info = update_index(previous, keys, image, held_out_queries(text, settings.queries), settings,
                                     versions)
    info = {**info, "subset_version": subset_version}
    write_index(lake, folder, index, keys, info)
    return info
