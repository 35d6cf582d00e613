"""dedup_assignment (per shard): each sample's nearest centroid, and its vectors in cluster order.

A sample also visits up to `boundary_clusters` next-nearest clusters whose boundary with its
own lies within the eps radius: a near duplicate across that boundary is then compared in
the neighbouring cluster. (For unit vectors and centroids, the distance of x to the bisector
of centroids a and b is (x.a - x.b) / |a - b|; a pair with cosine >= 1 - eps is at most
sqrt(2 eps) apart, so a partner on b's side exists only if that distance is within it.)

Files (shards/<shard>/dedup/<model>/):
    assignment.parquet          key, shard, cluster, centroid_similarity (embeddings row order);
                                its metadata commits the version and names the centroids
    versions/<v>/vectors.npy    float16 unit vectors sorted by cluster (visits included)
    versions/<v>/rows.npy       int32 (cluster, sample row, visitor) per vectors.npy row
The pairwise step reads the rows of a range of clusters from every shard with one ranged read.
"""

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from assets.dedup.centroids import Centroids
from assets.dedup.nearest import CentroidSearch
from resources.dedup import DedupSettings
from resources.embedding_files import load_image_embeddings, normalized
from resources.lake import LakeResource, assignment_dir, prune_versions, with_metadata

CODE_VERSION = "2"
ASSIGNMENT_KEY = "clipsieve.dedup_assignment"  # Parquet metadata: {"version", "centroids", "eps", ...}


@dataclass(frozen=True)
class Assignment:
    cluster: np.ndarray  # int32 per sample: its nearest centroid
    similarity: np.ndarray  # float32 per sample: cosine to that centroid
    visits: np.ndarray  # int64 (m, 2): (sample row, cluster) of each boundary visit


_searches: dict[str, CentroidSearch] = {}  # one per process: the centroids' version -> their search


def cached_centroid_search(centroids: Centroids) -> CentroidSearch:
    """The centroids' search (assets/dedup/nearest.py), built once per process for a version
    of the centroids (a run assigns many shards against the same ones)."""
    if centroids.version not in _searches:
        _searches.clear()
        _searches[centroids.version] = CentroidSearch(centroids.vectors, offsets=centroids.offsets)
    return _searches[centroids.version]


def assign(vectors: np.ndarray, centroids: np.ndarray, eps: float, boundary_clusters: int,
           search: CentroidSearch | None = None) -> Assignment:
    """Best-scoring centroid of each unit vector (score: similarity minus the centroid's
    offset, in `search`), and the neighbouring clusters it visits (`search`: the centroids'
    CentroidSearch, when the caller keeps one; without it, no offsets)."""
    search = search if search is not None else CentroidSearch(centroids)
    score, cluster = search.search(vectors, 1 + max(0, boundary_clusters))
    nearest = cluster.shape[1]
    visits = np.zeros((0, 2), np.int64)
    if nearest > 1 and len(vectors):
        # The boundary between two clusters is where the scores tie: a vector within a
        # pair's distance (sqrt(2 eps)) of it may have a duplicate on the other side.
        gap = np.linalg.norm(centroids[cluster[:, :1]] - centroids[cluster[:, 1:]], axis=2)
        to_boundary = (score[:, :1] - score[:, 1:]) / np.maximum(gap, 1e-12)
        rows, ranks = np.nonzero(to_boundary <= np.sqrt(2 * eps))
        visits = np.stack([rows, cluster[:, 1:][rows, ranks]], axis=1).astype(np.int64)
    similarity = score[:, 0] + search.offsets[cluster[:, 0]]  # the plain cosine to the centroid taken
    return Assignment(cluster[:, 0].astype(np.int32), similarity.astype(np.float32), visits)


def cluster_order(assignment: Assignment) -> np.ndarray:
    """int32 (cluster, sample row, visitor) rows sorted by cluster, then visitor, then sample row."""
    n = len(assignment.cluster)
    rows = np.concatenate([
        np.stack([assignment.cluster, np.arange(n), np.zeros(n)], axis=1),
        np.stack([assignment.visits[:, 1], assignment.visits[:, 0], np.ones(len(assignment.visits))], axis=1),
    ]).astype(np.int32)
    return rows[np.lexsort((rows[:, 1], rows[:, 2], rows[:, 0]))]


def assign_shard(lake: LakeResource, shard: str, model_id: str, centroids: Centroids,
                 settings: DedupSettings) -> dict:
    """Assign the shard's samples, write its files and commit them; its figures."""
    keys, image = load_image_embeddings(lake, shard, model_id)
    vectors = normalized(image)
    result = assign(vectors, centroids.vectors, settings.eps, settings.boundary_clusters,
                    cached_centroid_search(centroids))
    centroids_version = centroids.version
    rows = cluster_order(result)
    ordered = vectors[rows[:, 1]].astype(np.float16)
    digest = hashlib.sha256(ordered.tobytes() + rows.tobytes() + centroids_version.encode())
    version = digest.hexdigest()[:16]
    folder = assignment_dir(shard, model_id)
    lake.write_npy(f"{folder}/versions/{version}/vectors.npy", ordered)
    lake.write_npy(f"{folder}/versions/{version}/rows.npy", rows)
    record = {"version": version, "centroids": centroids_version, "eps": settings.eps,
              "boundary_clusters": settings.boundary_clusters}
    previous = read_record(lake, shard, model_id)
    table = pa.table({
        "key": keys.column("key"),
        "shard": pa.array([shard] * keys.num_rows, pa.string()),
        "cluster": pa.array(result.cluster, pa.int32()),
        "centroid_similarity": pa.array(result.similarity, pa.float32()),
    })
    lake.write_parquet(f"{folder}/assignment.parquet",
                       with_metadata(table, {ASSIGNMENT_KEY: json.dumps(record, sort_keys=True)}))
    prune_versions(lake, f"{folder}/versions", {version, (previous or {}).get("version", "")})
    return {"samples": keys.num_rows, "visits": int(len(result.visits)),
            "clusters": int(len(np.unique(result.cluster))), "version": version, "centroids": centroids_version}


def read_record(lake: LakeResource, shard: str, model_id: str) -> dict | None:
    """What the shard's committed assignment.parquet says of itself, or None."""
    path = f"{assignment_dir(shard, model_id)}/assignment.parquet"
    if not lake.exists(path):
        return None
    value = lake.parquet_metadata(path).get(ASSIGNMENT_KEY)
    return json.loads(value) if value else None
