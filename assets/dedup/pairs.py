"""The in-memory arithmetic of the pairwise step: candidate pairs within clusters, the
thumbnail check, and duplicate groups with their keepers. Samples are named by integer ids
here; assets/dedup/near_duplicates.py maps them to (shard, key)."""

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

MAX_BLOCK_ENTRIES = 1 << 24  # similarities computed at once (64 MiB of float32)


def _above(rows: np.ndarray, cols: np.ndarray, vectors: np.ndarray, threshold: float,
           found: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Append the (row, col) of every rows x cols product at or above `threshold`."""
    if not len(rows) or not len(cols):
        return
    chunk = max(1, MAX_BLOCK_ENTRIES // len(cols))
    block = vectors[cols].T
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        sims = vectors[part] @ block
        i, j = np.nonzero(sims >= threshold)
        found.append((part[i], cols[j]))


def cluster_pairs(vectors: np.ndarray, clusters: np.ndarray, ids: np.ndarray, visitor: np.ndarray,
                  dirty: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) with a < b (ids) for every pair in one cluster with cosine >= 1 - eps
    and at least one dirty side. A cluster's own samples are compared with each other and with
    its visitors; visitors are not compared with each other (their own cluster does that)."""
    found: list[tuple[np.ndarray, np.ndarray]] = []
    order = np.argsort(clusters, kind="stable")
    bounds = np.flatnonzero(np.diff(clusters[order])) + 1
    for members in np.split(order, bounds):
        own, visiting = members[~visitor[members]], members[visitor[members]]
        if not dirty[members].any():
            continue
        _above(own[dirty[own]], members, vectors, 1 - eps, found)  # dirty own x everything
        _above(own[~dirty[own]], visiting[dirty[visiting]], vectors, 1 - eps, found)  # clean own x dirty visitors
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    i = np.concatenate([f[0] for f in found])
    j = np.concatenate([f[1] for f in found])
    a, b = np.minimum(ids[i], ids[j]), np.maximum(ids[i], ids[j])
    distinct = a != b
    return a[distinct], b[distinct]


def unique_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each (a, b) once (a pair met in two clusters, through a visit)."""
    pairs = np.unique(np.stack([a, b], axis=1), axis=0) if len(a) else np.zeros((0, 2), np.int64)
    return pairs[:, 0], pairs[:, 1]


def normalized_thumbnails(thumbnails: list[bytes | None]) -> np.ndarray:
    """Zero-mean unit 8x8 thumbnails; an image without one (it did not decode for image_hashes)
    is all zeros, so it correlates with nothing and no thumbnail check confirms it."""
    size = next((len(t) for t in thumbnails if t is not None), 64)
    joined = b"".join(bytes(size) if t is None else t for t in thumbnails)
    pixels = np.frombuffer(joined, dtype=np.uint8).reshape(len(thumbnails), -1).astype(np.float32)
    pixels -= pixels.mean(axis=1, keepdims=True)
    return pixels / np.maximum(np.linalg.norm(pixels, axis=1, keepdims=True), 1e-6)


def thumbnails_alike(first: np.ndarray, second: np.ndarray, min_correlation: float) -> np.ndarray:
    """Whether each pair of normalized thumbnails correlates at least `min_correlation` (0: always)."""
    if min_correlation <= 0:
        return np.ones(len(first), bool)
    return np.einsum("nd,nd->n", first, second) >= min_correlation


def group_keepers(rank: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For nodes 0..n-1 joined by the (a, b) edges, the node each one's group keeps: the node
    of lowest `rank` in its connected component (ranks are distinct)."""
    n = len(rank)
    if n == 0:
        return np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    best = np.full(labels.max() + 1, -1, np.int64)
    order = np.argsort(rank, kind="stable")[::-1]  # highest rank first: the lowest is written last
    best[labels[order]] = order
    return best[labels]


def brute_force_pairs(vectors: np.ndarray, eps: float) -> set[tuple[int, int]]:
    """Every (i, j), i < j, with cosine >= 1 - eps: the reference the clustered search must equal."""
    found: list[tuple[np.ndarray, np.ndarray]] = []
    everything = np.arange(len(vectors))
    _above(everything, everything, vectors, 1 - eps, found)
    return {(int(i), int(j)) for part in found for i, j in zip(part[0], part[1]) if i < j}
