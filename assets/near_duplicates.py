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
from dagster import AssetExecutionContext, AssetKey, AssetsDefinition, Config, MaterializeResult, asset
from pydantic import Field

from assets.embeddings import load_embeddings
from resources.lake import LakeResource, dedup_path

CODE_VERSION = "1"


@dataclass(frozen=True)
class DedupParams:
    cluster_size: int = 200
    eps: float = 0.1
    min_thumbnail_correlation: float = 0.975
    seed: int = 0


class _UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:  # the lower index, i.e. the earlier sample, stays the root
            self.parent[max(ra, rb)] = min(ra, rb)


def _normalized_thumbnails(thumbnails: list[bytes]) -> np.ndarray:
    pixels = np.frombuffer(b"".join(thumbnails), dtype=np.uint8).reshape(len(thumbnails), -1).astype(np.float32)
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
                   min_correlation: float, chunk: int = 1024) -> list[tuple[int, int]]:
    """(i, j), i < j, in the same cluster with cosine >= 1 - eps (and thumbnails alike)."""
    pairs = []
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
            pairs.extend(zip(a.tolist(), b.tolist()))
    return pairs


def _same_value_pairs(values: list) -> list[tuple[int, int]]:
    first: dict = {}
    pairs = []
    for i, value in enumerate(values):
        if value is None:
            continue
        if value in first:
            pairs.append((first[value], i))
        else:
            first[value] = i
    return pairs


def find_duplicates(samples: pa.Table, vectors: np.ndarray, params: DedupParams) -> pa.Table:
    """Duplicate groups of `samples` (key, shard, sha256, phash, thumbnail; rows aligned
    with `vectors`), returned in (shard, key) order."""
    order = np.lexsort((np.asarray(samples.column("key").to_pylist(), dtype=object).astype(str),
                        np.asarray(samples.column("shard").to_pylist(), dtype=object).astype(str)))
    samples, vectors = samples.take(order), vectors[order]
    n = samples.num_rows
    sha256 = samples.column("sha256").to_pylist()
    phash = samples.column("phash").to_pylist()
    clusters = cluster_embeddings(vectors, params.cluster_size, params.seed) if n else np.zeros(0, np.int64)
    thumbnails = _normalized_thumbnails(samples.column("thumbnail").to_pylist()) if n else None
    groups = _UnionFind(n)
    for a, b in (_same_value_pairs(sha256) + _same_value_pairs(phash)
                 + semantic_pairs(vectors, clusters, params.eps, thumbnails, params.min_thumbnail_correlation)):
        groups.union(a, b)
    roots = np.array([groups.find(i) for i in range(n)], dtype=np.int64)
    sizes = np.bincount(roots, minlength=n)[roots] if n else np.zeros(0, np.int64)
    keys = samples.column("key").to_pylist()
    is_duplicate = roots != np.arange(n)
    reasons = [
        None if not dup else "exact" if sha256[i] == sha256[r] else "phash" if phash[i] == phash[r] else "semantic"
        for i, (r, dup) in enumerate(zip(roots.tolist(), is_duplicate.tolist()))
    ]
    return pa.table({
        "key": samples.column("key"),
        "shard": samples.column("shard"),
        "cluster": pa.array(clusters, pa.int32()),
        "is_duplicate": pa.array(is_duplicate, pa.bool_()),
        "duplicate_of": pa.array([keys[r] if d else None for r, d in zip(roots.tolist(), is_duplicate)], pa.string()),
        "duplicate_reason": pa.array(reasons, pa.string()),
        "group_size": pa.array(sizes, pa.int32()),
    })


def load_dedup_inputs(lake: LakeResource, model_id: str) -> tuple[pa.Table, np.ndarray]:
    """Every embedded sample's (key, shard, sha256, phash, thumbnail) and image embedding."""
    tables, chunks = [], []
    for path in lake.glob(f"shards/*/embeddings/{model_id}/keys.parquet"):
        shard = path.split("/")[1]
        keys, image, _ = load_embeddings(lake, shard, model_id)
        hashes = lake.read_parquet(f"shards/{shard}/scores/exact_hash.parquet")
        row_of = {k: i for i, k in enumerate(hashes.column("key").to_pylist())}
        missing = [k for k in keys.column("key").to_pylist() if k not in row_of]
        if missing:
            raise ValueError(f"shard {shard}: {len(missing)} embedded sample(s) have no exact_hash row")
        aligned = hashes.take([row_of[k] for k in keys.column("key").to_pylist()])
        tables.append(aligned.select(["key", "shard", "sha256", "phash", "thumbnail"]))
        chunks.append(image)
    if not tables:
        raise ValueError(f"no embeddings for model {model_id} in the lake yet")
    vectors = np.concatenate(chunks).astype(np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return pa.concat_tables(tables), np.ascontiguousarray(vectors)


class DedupConfig(Config):
    cluster_size: int = Field(default=200, description="Average samples per k-means cluster.")
    eps: float = Field(default=0.1, description="Candidate pairs have cosine >= 1 - eps (SemDeDup's epsilon).")
    min_thumbnail_correlation: float = Field(
        default=0.975, description="Keep a candidate pair only if its 8x8 thumbnails correlate this much (0: off).")
    seed: int = Field(default=0, description="k-means seed.")


def build_near_duplicates_asset(model_id: str) -> AssetsDefinition:
    @asset(
        name="near_duplicates",
        deps=[AssetKey("embeddings"), AssetKey(["scores", "exact_hash"])],
        group_name="dedup",
        code_version=f"{CODE_VERSION}+{model_id}",
        compute_kind="faiss",
    )
    def near_duplicates(context: AssetExecutionContext, config: DedupConfig, lake: LakeResource) -> MaterializeResult:
        """Duplicate groups across all shards: SemDeDup clusters + exact and perceptual hashes."""
        samples, vectors = load_dedup_inputs(lake, model_id)
        params = DedupParams(config.cluster_size, config.eps, config.min_thumbnail_correlation, config.seed)
        table = find_duplicates(samples, vectors, params)
        lake.write_parquet(dedup_path(model_id), table)
        reasons = [r for r in table.column("duplicate_reason").to_pylist() if r]
        return MaterializeResult(metadata={
            "samples": table.num_rows,
            "duplicates": len(reasons),
            **{f"duplicates/{r}": reasons.count(r) for r in ("exact", "phash", "semantic")},
            "clusters": int(len(set(table.column("cluster").to_pylist()))),
            "model_id": model_id,
            "path": lake.path(dedup_path(model_id)),
        })

    return near_duplicates
