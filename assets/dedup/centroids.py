"""dedup_centroids: spherical k-means centroids of the pool's image embeddings.

Trained on at most `max_training_samples` vectors drawn evenly from every shard (one shard
read at a time), so memory and time do not grow with the pool. The number of clusters is
the pool size over the target cluster size, at most the training sample over 20; past
1,024 clusters the k-means is two-level (assets/kmeans.py), so tens of thousands of
clusters train in seconds.
The centroids are kept while they still fit the pool (same model and settings, the pool
within half to twice the size they were trained for): a new shard is then assigned alone,
against the same centroids, and nothing already assigned changes.
"""

import hashlib

import numpy as np

from assets.kmeans import spherical_kmeans
from resources.dedup import DedupSettings
from resources.embedding_files import embedded_count, load_image_embeddings, normalized
from resources.lake import LakeResource, dedup_dir, prune_versions

CODE_VERSION = "1"
REGROW_FACTOR = 2.0  # retrain once the pool has grown (or shrunk) this much since training
MIN_POINTS_PER_CENTROID = 20  # training vectors per centroid, at least
TRAINING_SETTINGS = ("cluster_size", "max_training_samples", "seed")


def cluster_count(pool_size: int, cluster_size: int, training_samples: int) -> int:
    """The pool size over the target cluster size, at most what the training sample can place
    (past that, clusters grow with the pool and the pairwise step does more per sample)."""
    return max(1, min(pool_size // max(1, cluster_size), training_samples // MIN_POINTS_PER_CENTROID))


def shard_sizes(lake: LakeResource, model_id: str, shards: list[str]) -> dict[str, int]:
    """Embedded samples per shard (each shard's keys.parquet footer only)."""
    return {shard: embedded_count(lake, shard, model_id) for shard in shards}


def training_sample(lake: LakeResource, model_id: str, sizes: dict[str, int], limit: int,
                    seed: int) -> np.ndarray:
    """Up to `limit` normalized image embeddings (float16), each shard giving its share of
    the pool."""
    total = sum(sizes.values())
    rng = np.random.default_rng(seed)
    chunks = []
    for shard, size in sorted(sizes.items()):
        take = size if total <= limit else int(round(limit * size / total))
        if take <= 0:
            continue
        _, image = load_image_embeddings(lake, shard, model_id)
        rows = np.sort(rng.choice(len(image), size=min(take, len(image)), replace=False))
        chunks.append(normalized(image[rows]).astype(np.float16))  # as stored: half the memory
    dim = chunks[0].shape[1] if chunks else 1
    return np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float16)


def train_centroids(vectors: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k unit centroids by spherical k-means (assets/kmeans.py; one centroid, the normalized
    mean, when k is 1)."""
    if k <= 1 or len(vectors) <= k:
        mean = vectors.astype(np.float32).mean(axis=0, keepdims=True) if len(vectors) else \
            np.ones((1, vectors.shape[1]), np.float32)
        return normalized(mean)
    return spherical_kmeans(vectors, k, seed)


def retrain_reason(info: dict | None, model_id: str, pool_size: int, settings: DedupSettings) -> str | None:
    """Why the committed centroids no longer fit the pool, or None when they do."""
    if info is None:
        return "no centroids yet"
    if info.get("model_id") != model_id:
        return f"trained for model {info.get('model_id')}"
    if info.get("settings") != settings.digest(*TRAINING_SETTINGS):
        return "cluster_size, max_training_samples or seed changed"
    trained = max(1, info.get("pool_size", 1))
    if not trained / REGROW_FACTOR <= pool_size <= trained * REGROW_FACTOR:
        return f"the pool has {pool_size} samples, the centroids were trained for {trained}"
    return None


def read_centroids(lake: LakeResource, model_id: str) -> tuple[np.ndarray, dict] | None:
    """The committed centroids and their info, or None."""
    path = f"{dedup_dir(model_id)}/centroids.json"
    if not lake.exists(path):
        return None
    info = lake.read_json(path)
    return lake.read_npy(f"{dedup_dir(model_id)}/centroids/{info['version']}/centroids.npy"), info


def update_centroids(lake: LakeResource, model_id: str, shards: list[str], settings: DedupSettings) -> dict:
    """Keep the committed centroids if they fit the pool of `shards`, else train and commit
    new ones; their info (`retrained` says which, `reason` why)."""
    sizes = shard_sizes(lake, model_id, shards)
    pool_size = sum(sizes.values())
    committed = read_centroids(lake, model_id)
    reason = retrain_reason(committed[1] if committed else None, model_id, pool_size, settings)
    if reason is None:
        return {**committed[1], "retrained": False, "pool_now": pool_size}
    if not pool_size:
        raise ValueError(f"no embedded samples for model {model_id} in the pool yet")
    sample = training_sample(lake, model_id, sizes, settings.max_training_samples, settings.seed)
    k = cluster_count(pool_size, settings.cluster_size, len(sample))
    centroids = train_centroids(sample, k, settings.seed)
    version = hashlib.sha256(centroids.tobytes()).hexdigest()[:16]
    folder = dedup_dir(model_id)
    lake.write_npy(f"{folder}/centroids/{version}/centroids.npy", centroids)
    info = {"version": version, "model_id": model_id, "clusters": int(len(centroids)), "pool_size": pool_size,
            "training_samples": int(len(sample)), "settings": settings.digest(*TRAINING_SETTINGS),
            "reason": reason}
    lake.write_json(f"{folder}/centroids.json", info)
    previous = committed[1]["version"] if committed else ""
    prune_versions(lake, f"{folder}/centroids", {version, previous})
    return {**info, "retrained": True, "pool_now": pool_size}
