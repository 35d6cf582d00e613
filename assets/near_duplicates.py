"""near_duplicates: duplicate groups over the whole crawl, SemDeDup-style.

1. k-means (faiss, spherical) over the normalized image embeddings, about
   `cluster_size` samples per cluster, so no step compares every pair of the crawl;
2. within each cluster, pairs whose cosine is at least 1 - eps are candidates;
3. a candidate pair is kept when the two 8x8 greyscale thumbnails correlate at least
   `min_thumbnail_correlation` (0 turns the check off). The check is what separates a
   re-upload of one picture from a second picture of the same thing when the embedding
   does not (the demo model embeds "a red circle on blue" alike whatever the layout);
4. byte-identical images (same sha256) and identical perceptual hashes are folded in.
Groups are the connected components; the keeper of a group is its first sample in
(shard, key) order, the others are its duplicates.

Writes dedup/<model>/clusters.parquet: key, shard, cluster, is_duplicate, duplicate_of,
duplicate_reason (exact | phash | semantic), group_size.
"""

from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from assets.embeddings import load_embeddings
from resources.lake import LakeResource, pool_shards

CODE_VERSION = "1"


@dataclass(frozen=True)
class DedupParams:
    cluster_size: int = 200
    eps: float = 0.1
    min_thumbnail_correlation: float = 0.975
    seed: int = 0


def _normalized_thumbnails(thumbnails: list[bytes | None]) -> np.ndarray:
    """Zero-mean unit thumbnails; an image without one (it did not decode for image_hashes) is
    all zeros, so it correlates with nothing and no thumbnail check confirms it."""
    size = next((len(t) for t in thumbnails if t is not None), 64)
    joined = b"".join(bytes(size) if t is None else t for t in thumbnails)
    pixels = np.frombuffer(joined, dtype=np.uint8).reshape(len(thumbnails), -1).astype(np.float32)
    pixels -= pixels.mean(axis=1, keepdims=True)
    return pixels / np.maximum(np.linalg.norm(pixels, axis=1, keepdims=True), 1e-6)


def cluster_embeddings(vectors: np.ndarray, cluster_size: int, seed: int) -> np.ndarray:
    """Spherical k-means cluster of each vector, about `cluster_size` vectors per cluster."""
    k = max(1, len(vectors) // max(1, cluster_size))
    if k == 1:
        return np.zeros(len(vectors), dtype=np.int64)
    kmeans = faiss.Kmeans(vectors.shape[1], k, niter=20, seed=seed, spherical=True,
                          max_points_per_centroid=max(256, cluster_size * 4))
    kmeans.train(vectors)
    return kmeans.index.search(vectors, 1)[1].ravel()


def semantic_pairs(vectors: np.ndarray, clusters: np.ndarray, eps: float, thumbnails: np.ndarray | None,
                   min_correlation: float, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) index arrays, a < b, of pairs in the same cluster with cosine >= 1 - eps (and
    thumbnails alike). Loops over clusters and blocks; each block is one matrix product."""
    found_a, found_b = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for cluster in np.unique(clusters):
        members = np.flatnonzero(clusters == cluster)
        block = vectors[members]
        for start in range(0, len(members), chunk):
            sims = block[start:start + chunk] @ block.T
            rows, cols = np.nonzero(sims >= 1 - eps)
            rows += start
            keep = rows < cols
            a, b = members[rows[keep]], members[cols[keep]]
            if thumbnails is not None and min_correlation > 0 and len(a):
                alike = np.einsum("nd,nd->n", thumbnails[a], thumbnails[b]) >= min_correlation
                a, b = a[alike], b[alike]
            found_a.append(a)
            found_b.append(b)
    return np.concatenate(found_a), np.concatenate(found_b)


def same_value_pairs(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(first row with the value, later row with the same value) for every repeated non-null value."""
    valid = np.flatnonzero(np.asarray(pc.is_valid(column)))
    if not len(valid):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    values = column.take(pa.array(valid, pa.int64())).to_numpy(zero_copy_only=False)
    _, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    earliest = valid[first[inverse.ravel()]]
    repeated = earliest != valid
    return earliest[repeated], valid[repeated]


def group_roots(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each of n rows, the lowest row index joined to it through the (a, b) pairs:
    connected components of the pair graph, each named by its earliest sample."""
    if n == 0:
        return np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    earliest = np.full(labels.max() + 1, n, np.int64)
    np.minimum.at(earliest, labels, np.arange(n))
    return earliest[labels]


def find_duplicates(samples: pa.Table, vectors: np.ndarray, params: DedupParams) -> pa.Table:
    """Duplicate groups of `samples` (key, shard, sha256, phash, thumbnail; rows aligned
    with `vectors`), returned in (shard, key) order. The earliest sample of a group is kept."""
    order = pc.sort_indices(samples, sort_keys=[("shard", "ascending"), ("key", "ascending")])
    samples, vectors = samples.take(order), vectors[np.asarray(order)]
    n = samples.num_rows
    clusters = cluster_embeddings(vectors, params.cluster_size, params.seed) if n else np.zeros(0, np.int64)
    thumbnails = _normalized_thumbnails(samples.column("thumbnail").to_pylist()) if n else None
    pairs = [same_value_pairs(samples.column("sha256")), same_value_pairs(samples.column("phash")),
             semantic_pairs(vectors, clusters, params.eps, thumbnails, params.min_thumbnail_correlation)]
    roots = group_roots(n, np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs]))
    sizes = np.bincount(roots, minlength=n)[roots] if n else np.zeros(0, np.int64)
    is_duplicate = roots != np.arange(n)
    root_index = pa.array(roots, pa.int64())

    def same_as_root(name: str) -> np.ndarray:
        column = samples.column(name)
        return np.asarray(pc.fill_null(pc.equal(column, column.take(root_index)), False))

    reasons = np.where(~is_duplicate, None, np.where(same_as_root("sha256"), "exact",
                                                     np.where(same_as_root("phash"), "phash", "semantic")))
    duplicate_of = pc.if_else(pa.array(is_duplicate), samples.column("key").take(root_index), None)
    return pa.table({
        "key": samples.column("key"),
        "shard": samples.column("shard"),
        "cluster": pa.array(clusters, pa.int32()),
        "is_duplicate": pa.array(is_duplicate, pa.bool_()),
        "duplicate_of": duplicate_of.cast(pa.string()),
        "duplicate_reason": pa.array(reasons, pa.string()),
        "group_size": pa.array(sizes, pa.int32()),
    })


def load_dedup_inputs(lake: LakeResource, model_id: str,
                      registered: list[str] | None = None) -> tuple[pa.Table, np.ndarray, dict[str, str]]:
    """Every pooled sample's (key, shard, sha256, phash, thumbnail) and image embedding, and
    the shards left out with the reason (a per-shard output missing, see pool_shards, or
    hashes that do not cover the shard's embedded samples: its image_hashes step failed). One
    such shard never stops the others."""
    tables, chunks = [], []
    complete, left_out = pool_shards(lake, model_id, registered)  # the catalog's scored pool
    for shard in complete:
        hashes_path = f"shards/{shard}/scores/image_hashes.parquet"
        keys, image, _ = load_embeddings(lake, shard, model_id)
        hashes = lake.read_parquet(hashes_path)
        rows = pc.index_in(keys.column("key"), value_set=hashes.column("key"))
        if rows.null_count:
            left_out[shard] = (f"{rows.null_count} embedded sample(s) have no image_hashes row (image_hashes is "
                               "older than the embeddings: its last run failed)")
            continue
        aligned = hashes.take(rows)
        tables.append(aligned.select(["key", "shard", "sha256", "phash", "thumbnail"]))
        chunks.append(image)
    if not tables:
        raise ValueError(f"no shard with embeddings and hashes for model {model_id} in the lake yet"
                         + (f"; left out: {left_out}" if left_out else ""))
    vectors = np.concatenate(chunks).astype(np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return pa.concat_tables(tables), np.ascontiguousarray(vectors), left_out
