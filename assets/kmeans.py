"""Spherical k-means for many clusters: the near-duplicate centroids and an IVF index's
coarse quantizer.

One k-means with k centroids costs samples x k x dim per iteration, which at k in the tens
of thousands (an IVF over 10M vectors, or clusters of ~200 over a large pool) takes hours on
a few cores. Above `TWO_LEVEL_FROM` centroids the training is two-level, as faiss's
two-level clustering does: about sqrt(k) coarse centroids over the whole sample, then each
coarse cell's vectors split into a share of the k fine centroids proportional to its size.
The cost falls to about 2 x samples x sqrt(k) x dim per iteration, and the fine centroids
still follow the density of the data.
"""

import math

import faiss
import numpy as np

from resources.embedding_files import normalized

TWO_LEVEL_FROM = 1024  # centroids above which training is two-level
ITERATIONS = 20
COARSE_POINTS_PER_CENTROID = 256  # the coarse level trains on at most this many vectors a centroid
CHUNK = 100_000  # vectors made float32 at once to find their coarse cell


def _flat_kmeans(vectors: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k unit centroids by one spherical k-means over all of `vectors`."""
    if k <= 1 or len(vectors) <= k:
        if len(vectors) <= k and len(vectors):
            return normalized(vectors)
        mean = vectors.mean(axis=0, keepdims=True) if len(vectors) else np.ones((1, vectors.shape[1]), np.float32)
        return normalized(mean)
    kmeans = faiss.Kmeans(vectors.shape[1], k, niter=ITERATIONS, seed=seed, spherical=True,
                          max_points_per_centroid=max(256, len(vectors) // k + 1), min_points_per_centroid=1)
    kmeans.train(np.ascontiguousarray(vectors, dtype=np.float32))
    return normalized(kmeans.centroids)


def fine_shares(sizes: np.ndarray, k: int) -> np.ndarray:
    """Split k centroids over cells of `sizes` in proportion (largest remainders), each
    non-empty cell at least one and none more than its size; the shares sum to
    min(k, sizes.sum())."""
    sizes = np.asarray(sizes, np.int64)
    total = int(sizes.sum())
    k = min(k, total)
    exact = sizes * k / max(1, total)
    shares = np.minimum(np.maximum(np.floor(exact).astype(np.int64), (sizes > 0).astype(np.int64)), sizes)
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")
    while shares.sum() < k:  # hand the remainder out, largest fractional part first
        for cell in order:
            if shares.sum() >= k:
                break
            if shares[cell] < sizes[cell]:
                shares[cell] += 1
    while shares.sum() > k:  # the minimum of one per cell overshot: take from the largest
        cell = int(np.argmax(shares))
        shares[cell] -= 1
    return shares


def spherical_kmeans(vectors: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Up to k unit centroids of the unit `vectors` (fewer when there are fewer vectors).
    float16 vectors stay float16 in the two-level path: only a sample for the coarse level and
    one cell at a time are made float32 (a million 512-d training vectors: 1 GiB, not 2)."""
    if k < TWO_LEVEL_FROM or len(vectors) <= k:
        return _flat_kmeans(np.ascontiguousarray(vectors, dtype=np.float32), k, seed)
    coarse_k = int(math.ceil(math.sqrt(k)))
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(vectors), size=min(len(vectors), COARSE_POINTS_PER_CENTROID * coarse_k), replace=False)
    coarse = _flat_kmeans(np.ascontiguousarray(vectors[np.sort(sample)], dtype=np.float32), coarse_k, seed)
    index = faiss.IndexFlatIP(coarse.shape[1])
    index.add(coarse)
    cells = np.concatenate([
        index.search(np.ascontiguousarray(vectors[start:start + CHUNK], dtype=np.float32), 1)[1][:, 0]
        for start in range(0, len(vectors), CHUNK)])
    shares = fine_shares(np.bincount(cells, minlength=len(coarse)), k)
    parts = [_flat_kmeans(np.ascontiguousarray(vectors[cells == cell], dtype=np.float32), int(share), seed + 1 + cell)
             for cell, share in enumerate(shares) if share > 0]
    return np.concatenate(parts)
