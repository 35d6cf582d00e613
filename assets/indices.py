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
comfortably, "IVF<nlist>,Flat", "IVF<nlist>,SQ8" (a byte a dimension) then
"IVF<nlist>,PQ<m>" (product codes) as the set grows; from 4,096 lists the coarse quantizer
is an HNSW graph ("IVF<nlist>_HNSW32,..."). IVF indices over a subset in the lake are built
in parts, a part per shard, merged into an index whose lists stay on disk
(assets/index_parts.py); the rest are built in memory. Search parameters (nprobe,
efSearch) are tuned on held-out queries — the text embeddings of a sample of members,
which are not in the index — to the target recall, and recall@10 is measured on them
against exact search (the rows returned are checked against the exact top 20 by their
exact scores; a compressed index's own scores are approximate).

Vectors are read a shard at a time (assets/index_vectors.py): a build holds the index, the
training sample (IVF, at most TRAINING_SAMPLE vectors) and one shard's vectors; exact search
for the recall truth streams over the shards too, and only the queries' text rows are read.
"""

import math
import re
import time

import faiss
import numpy as np
import pyarrow as pa

from assets.embeddings import encode_images, encode_texts
from assets.index_vectors import ArrayVectors, MemberVectors
from assets.kmeans import spherical_kmeans
from resources.clip_model import LoadedClip
from resources.indexing import IndexSettings, SegmentedSearch, join_top, set_search_parameters

CODE_VERSION = "6"
Vectors = ArrayVectors | MemberVectors


HNSW_QUANTIZER_FROM = 4096  # inverted lists from which the coarse quantizer is an HNSW graph


def nlist_of(factory: str) -> int:
    """The number of inverted lists of an IVF factory string ("IVF4096_HNSW32,PQ256": 4096)."""
    return int(re.match(r"IVF(\d+)", factory).group(1))


def choose_factory(count: int, dim: int, memory_budget_bytes: int) -> str:
    """The faiss factory string for `count` vectors of `dim` floats within the budget."""
    flat_bytes = count * dim * 4
    if count <= 20_000 and flat_bytes <= memory_budget_bytes:
        return "Flat"
    if count <= 1_000_000 and flat_bytes * 2 <= memory_budget_bytes:
        return "HNSW32"  # vectors plus ~32 links of 8 bytes each per vector
    nlist = 2 ** int(round(math.log2(max(64, min(65536, 4 * math.sqrt(count))))))
    # Many lists: an HNSW graph over the centroids finds a vector's lists without comparing it
    # with every centroid (adding 10M vectors to 16k flat lists takes the better part of an hour).
    coarse = f"IVF{nlist}_HNSW32" if nlist >= HNSW_QUANTIZER_FROM else f"IVF{nlist}"
    quantizer_bytes = nlist * (dim * 4 + (64 if nlist >= HNSW_QUANTIZER_FROM else 0) * 4)
    if flat_bytes * 1.1 + quantizer_bytes <= memory_budget_bytes:
        return f"{coarse},Flat"
    # One byte a dimension keeps recall@10 near 0.99 on CLIP-like clusters; product codes lose
    # more (PQ at dim/2 bytes about 0.9 measured by exact search, dim/4 about 0.7): the last resort.
    if count * (dim + 8) + quantizer_bytes <= memory_budget_bytes:
        return f"{coarse},SQ8"
    for m in (dim // 2, dim // 4, dim // 8, dim // 16):
        if m >= 4 and dim % m == 0 and count * (m + 8) + quantizer_bytes <= memory_budget_bytes:
            return f"{coarse},PQ{m}"
    raise ValueError(f"{count} vectors of dim {dim} do not fit {memory_budget_bytes} bytes even as IVF-PQ")


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) of the exact top k of each query among `vectors` (in memory)."""
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    return exact.search(queries, k)


def exact_top(source: Vectors, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, positions) of the exact top k of each query over every vector of `source`, a
    chunk at a time (no flat copy of the set): the truth recall is measured against."""
    best = np.full((len(queries), k), -np.inf, np.float32)
    rows = np.full((len(queries), k), -1, np.int64)
    for positions, vectors in source.chunks():
        best, rows = merge_top(best, rows, queries @ vectors.T, positions, k)
    return best, rows


def merge_top(best: np.ndarray, rows: np.ndarray, scores: np.ndarray, positions: np.ndarray,
              k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top k of (best, rows) joined with a block of `scores` of the vectors at `positions`."""
    if scores.shape[1] > k:
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores, block_rows = np.take_along_axis(scores, top, axis=1), positions[top]
    else:
        block_rows = np.broadcast_to(positions, scores.shape)
    return join_top(best, rows, scores, block_rows, k)


def recall_at_k(index: faiss.Index | SegmentedSearch, queries: np.ndarray, truth: tuple[np.ndarray, np.ndarray],
                k: int = 10) -> float:
    """Share of the exact top k the index returns. `truth`: the exact (scores, positions) of
    each query's top k or more, by exact search. A returned row is a hit when the truth holds
    it with a score at least the k-th exact score, so equal vectors in either order count
    (the index's own scores are not trusted: a compressed index's are approximate)."""
    kth = truth[0][:, k - 1]
    _, found = index.search(queries, k)
    hits = 0
    for query, rows in enumerate(found):
        good = truth[1][query][truth[0][query] >= kth[query] - 1e-4]
        hits += min(k, int(np.isin(rows[rows >= 0], good).sum()))
    return hits / (len(queries) * k)


def _candidate_params(factory: str) -> list[str]:
    if factory.startswith("HNSW"):
        return [f"efSearch={e}" for e in (16, 32, 64, 128, 256, 512)]
    if factory.startswith("IVF"):
        nlist = nlist_of(factory)
        probes = [2**i for i in range(13) if 2**i <= nlist]  # up to 4,096 lists a query
        if "_HNSW" in factory:  # the graph must return at least nprobe lists, and find the right ones
            return [f"nprobe={p},quantizer_efSearch={max(64, 2 * p)}" for p in probes]
        return [f"nprobe={p}" for p in probes]
    return [""]


def tune(index: faiss.Index | SegmentedSearch, factory: str, queries: np.ndarray, truth, target: float, k: int,
         start: str | None = None) -> tuple[str, float]:
    """The cheapest search parameters reaching `target` recall@k (or the best tried), set on
    the index. `start`: the parameters tuned last time; the search begins there and walks up
    only (a grown index does not need fewer, and each step searches every query: at 10M
    members one step at nprobe 4,096 takes tens of seconds)."""
    candidates = _candidate_params(factory)

    def measure(at: int) -> float:
        if candidates[at]:
            set_search_parameters(index, candidates[at])
        return recall_at_k(index, queries, truth, k)

    at = candidates.index(start) if start in candidates else 0
    best = (candidates[at], measure(at))
    while best[1] < target and at + 1 < len(candidates):  # walk up to the first that reaches it
        at += 1
        recall = measure(at)
        if recall >= target:
            return candidates[at], recall
        best = max(best, (candidates[at], recall), key=lambda pair: pair[1])
    if best[0] and best[0] != candidates[at]:
        set_search_parameters(index, best[0])
    return best


def _measure(index: faiss.Index, factory: str, source: Vectors, queries: np.ndarray,
             settings: IndexSettings) -> tuple[str, float]:
    """Tune the search parameters on `queries` and return (parameters, recall@10)."""
    if not source.count or not len(queries):
        return "", 1.0
    k = min(10, source.count)
    return tune(index, factory, queries, exact_top(source, queries, 2 * k), settings.target_recall, k)


def centroid_similarity(index: faiss.Index, source: Vectors, positions: np.ndarray | None = None) -> float | None:
    """Mean similarity of the vectors (at `positions`, default all) to their nearest IVF
    centroid (None for other index types)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return None
    total, count = 0.0, 0
    for _, vectors in source.chunks(positions):
        total += float(ivf.quantizer.search(vectors, 1)[0].sum())
        count += len(vectors)
    return total / count if count else None


TRAINING_SAMPLE = 256 * 64 * 16  # vectors an IVF quantizer (and PQ) trains on, at most


def training_sample(source: Vectors, seed: int = 0) -> np.ndarray:
    """At most TRAINING_SAMPLE of the source's vectors, drawn at random (one read of each
    shard that holds one)."""
    positions = np.random.default_rng(seed).choice(source.count, size=min(source.count, TRAINING_SAMPLE),
                                                   replace=False)
    sample, at = np.empty((len(positions), source.dim), np.float32), 0
    for _, vectors in source.chunks(positions):  # filled in place: no second copy while joining
        sample[at:at + len(vectors)] = vectors
        at += len(vectors)
    return sample


def train_index(source: Vectors, factory: str, seed: int = 0, sample: np.ndarray | None = None) -> faiss.Index:
    """An empty index of `factory` over `source.dim` floats, trained on `sample` (default: a
    training_sample of the source): an IVF's lists are spherical k-means centroids
    (assets/kmeans.py, two-level when there are many), then its codes (SQ, PQ) train on the
    same sample. Flat and HNSW need no training."""
    index = faiss.index_factory(source.dim, factory, faiss.METRIC_INNER_PRODUCT)
    if index.is_trained:
        return index
    sample = training_sample(source, seed) if sample is None else sample
    ivf = faiss.extract_index_ivf(index)
    centroids = spherical_kmeans(sample, ivf.nlist, seed)
    if len(centroids) != ivf.nlist:
        raise ValueError(f"{factory} needs {ivf.nlist} lists; {len(sample)} training vectors gave {len(centroids)}")
    ivf.quantizer.add(centroids)  # a quantizer holding nlist centroids is not trained again
    codes = faiss.downcast_index(ivf)
    if isinstance(codes, faiss.IndexIVFPQ):
        # The factory asks for polysemous training, which only a Hamming-threshold search
        # uses (clipsieve does not) and which takes minutes at PQ256.
        codes.do_polysemous_training = False
    index.train(sample)
    return index


def build_index(source: Vectors | np.ndarray, queries: np.ndarray, settings: IndexSettings = IndexSettings(),
                seed: int = 0) -> tuple[faiss.Index, dict]:
    """An inner-product index over the normalized vectors of `source`, in memory: trained on a
    bounded sample, added a chunk at a time, tuned and measured on `queries`."""
    source = ArrayVectors(source) if isinstance(source, np.ndarray) else source
    count, dim = source.count, source.dim
    factory = choose_factory(count, dim, settings.memory_budget_bytes)
    started = time.perf_counter()
    index = train_index(source, factory, seed)
    for _, vectors in source.chunks():
        index.add(vectors)
    build_seconds = time.perf_counter() - started
    params, recall = _measure(index, factory, source, queries, settings)
    return index, {
        "factory": factory,
        "search_params": params,
        "metric": "inner_product",
        "count": int(count),
        "dim": int(dim),
        "build_seconds": round(build_seconds, 4),
        "recall_at_10": recall,
        "recall_queries": int(len(queries)),
        "centroid_similarity": centroid_similarity(index, source),
        "build_mode": "rebuilt",
    }


DRIFT_TOLERANCE = 0.05  # new vectors this much further from their IVF centroids than at training: retrain


def drift_reason(trained: float | None, fresh: float | None) -> str | None:
    """Why new vectors need the IVF retrained (their mean similarity to their nearest centroid,
    `fresh`, fell well below the training vectors', `trained`), or None."""
    if trained is None or fresh is None or fresh >= trained - DRIFT_TOLERANCE:
        return None
    return f"drift: new vectors' centroid similarity {fresh:.3f} vs {trained:.3f} at training"


def update_index(previous: tuple[faiss.Index, pa.Table, dict] | None, source: Vectors, queries: np.ndarray,
                 settings: IndexSettings = IndexSettings(),
                 shard_versions: dict[str, str] | None = None) -> tuple[faiss.Index, pa.Table, dict]:
    """Grow the previous index by the new members' vectors when that is sound, else rebuild.

    Growing needs every previous member still in the subset with unchanged embeddings (its
    shard's embeddings version in `shard_versions`), the same index type for the new size,
    and, for IVF, new vectors about as close to the trained centroids as the training vectors
    were (no drift). `build_mode` and `rebuild_reason` say what happened.
    """
    shard_versions = shard_versions or {}
    keys = source.keys()
    reason = "no previous index"
    if previous is not None:
        index, old_keys, old_info = previous
        old = set(zip(old_keys.column("shard").to_pylist(), old_keys.column("key").to_pylist()))
        now = list(zip(keys.column("shard").to_pylist(), keys.column("key").to_pylist()))
        factory = choose_factory(len(now), source.dim, settings.memory_budget_bytes)
        changed = [s for s, v in old_info.get("shard_versions", {}).items() if shard_versions.get(s, v) != v]
        if not old <= set(now):
            reason = "members left the subset"
        elif changed:
            reason = f"embeddings of shard(s) {', '.join(sorted(changed))} changed"
        elif factory != old_info.get("factory") or source.dim != old_info.get("dim"):
            reason = f"index type changes to {factory}"
        else:
            added = np.array([i for i, member in enumerate(now) if member not in old], np.int64)
            fresh = centroid_similarity(index, source, added) if len(added) else None
            drift = drift_reason(old_info.get("centroid_similarity"), fresh)
            if drift:
                reason = drift
            else:
                started = time.perf_counter()
                order = []
                for positions, vectors in source.chunks(added):
                    index.add(vectors)
                    order.append(positions)
                seconds = time.perf_counter() - started
                params, recall = _measure(index, factory, source, queries, settings)
                info = {**old_info, "search_params": params, "count": int(index.ntotal), "recall_at_10": recall,
                        "build_seconds": round(seconds, 4), "build_mode": "grown", "added": len(added),
                        "recall_queries": int(len(queries)),
                        "shard_versions": {**old_info.get("shard_versions", {}), **shard_versions}}
                info.pop("rebuild_reason", None)
                grown = keys.take(pa.array(np.concatenate(order) if order else np.zeros(0, np.int64)))
                return index, pa.concat_tables([old_keys.select(["key", "shard"]), grown]), info
    index, info = build_index(source, queries, settings)
    return index, keys, {**info, "rebuild_reason": reason, "shard_versions": shard_versions}


def held_out_queries(source: Vectors, count: int, seed: int = 0) -> np.ndarray:
    """Text embeddings of a sample of members: queries that are not themselves indexed."""
    rng = np.random.default_rng(seed)
    return source.texts(rng.choice(source.count, size=min(count, source.count), replace=False))


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
