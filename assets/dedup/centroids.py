"""dedup_centroids: spherical k-means centroids of the pool's image embeddings.

Trained on at most `max_training_samples` vectors drawn evenly from every shard (one shard
read at a time), so memory and time do not grow with the pool. The number of clusters is
the pool size over the target cluster size, at most the training sample over 20; past
1,024 clusters the k-means is two-level (assets/kmeans.py), so tens of thousands of
clusters train in seconds.
The centroids are kept while they still fit the pool (same model and settings, the pool
within half to twice the size they were trained for): a new shard is then assigned alone,
against the same centroids, and nothing already assigned changes.

With `balance_clusters`, each centroid also gets an offset, subtracted from a vector's
similarity to it when the vector is assigned (without, the offsets are zeros). A centroid
trained on 20 vectors is pulled towards them; vectors it was not trained on go to the
centroids nearest the middle of their region instead, and the clusters come out lopsided
(on the 10M synthetic pool, half the clusters held under 14 samples and the largest tenth
71% of them; the largest 9,745). The offsets are fitted on held-out vectors (drawn with
the training sample, a fifth of its size; none when the pool is no larger than the training
sample) until each cluster takes its share of them: a price per centroid, raised while it
takes more than its share and lowered while it takes less. They move the boundaries
between clusters, and the pairwise step's boundary visits follow the moved boundaries. At
10M the largest cluster fell to 2,276 and the pairwise step ran in half the time, but more
near-duplicate pairs straddle the boundaries of smaller clusters: it found 9.5% fewer
semantic duplicates. Hence off by default.
"""

import hashlib
from dataclasses import dataclass

import numpy as np

from assets.dedup.nearest import CentroidSearch
from assets.kmeans import spherical_kmeans
from resources.dedup import DedupSettings
from resources.embedding_files import embedded_count, load_image_embeddings, normalized
from resources.lake import LakeResource, dedup_dir, prune_versions

CODE_VERSION = "2"
REGROW_FACTOR = 2.0  # retrain once the pool has grown (or shrunk) this much since training
MIN_POINTS_PER_CENTROID = 20  # training vectors per centroid, at least
TRAINING_SETTINGS = ("cluster_size", "max_training_samples", "seed", "balance_clusters")
HELD_OUT_SHARE = 0.2  # held-out vectors the offsets are fitted on, as a share of the training sample
BALANCE_SEARCHES = 6  # searches of the held-out vectors with the offsets fitted so far
BALANCE_CANDIDATES = 16  # the best-scoring centroids a search keeps for each held-out vector
BALANCE_ROUNDS = 12  # offset updates after each search, each vector choosing among its candidates
BALANCE_STEP = 0.002  # offset change (in cosine) per update, per unit of log(taken / fair share)


@dataclass(frozen=True)
class Centroids:
    """The committed centroids: unit vectors, their offsets and their info."""
    vectors: np.ndarray  # float32 (k, dim)
    offsets: np.ndarray  # float32 (k,): subtracted from a vector's similarity to each centroid
    info: dict

    @property
    def version(self) -> str:
        return self.info["version"]


def cluster_count(pool_size: int, cluster_size: int, training_samples: int) -> int:
    """The pool size over the target cluster size, at most what the training sample can place
    (past that, clusters grow with the pool and the pairwise step does more per sample)."""
    return max(1, min(pool_size // max(1, cluster_size), training_samples // MIN_POINTS_PER_CENTROID))


def shard_sizes(lake: LakeResource, model_id: str, shards: list[str]) -> dict[str, int]:
    """Embedded samples per shard (each shard's keys.parquet footer only)."""
    return {shard: embedded_count(lake, shard, model_id) for shard in shards}


def training_sample(lake: LakeResource, model_id: str, sizes: dict[str, int], limit: int, seed: int,
                    held_out_limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Up to `limit` normalized image embeddings (float16) for training, each shard giving its
    share of the pool, and up to `held_out_limit` other ones (none while the pool is no larger
    than `limit`), drawn from the same shard reads."""
    total = sum(sizes.values())
    held_out_limit = min(held_out_limit, max(0, total - limit))
    rng = np.random.default_rng(seed)
    chunks, held = [], []
    for shard, size in sorted(sizes.items()):
        take = size if total <= limit else int(round(limit * size / total))
        spare = int(round(held_out_limit * size / total)) if held_out_limit else 0
        take = min(take, size)
        spare = min(spare, size - take)
        if take + spare <= 0:
            continue
        _, image = load_image_embeddings(lake, shard, model_id)
        rows = rng.choice(len(image), size=take + spare, replace=False)
        # float16 as stored: half the memory
        chunks.append(normalized(image[np.sort(rows[:take])]).astype(np.float16))
        held.append(normalized(image[np.sort(rows[take:])]).astype(np.float16))
    dim = chunks[0].shape[1] if chunks else 1
    empty = np.zeros((0, dim), np.float16)
    return (np.concatenate(chunks) if chunks else empty), (np.concatenate(held) if held else empty)


def balance_offsets(centroids: np.ndarray, held_out: np.ndarray) -> np.ndarray:
    """Offsets (one per centroid, subtracted from similarities) under which the held-out
    vectors spread over the clusters evenly; zeros without held-out vectors. Each search
    finds every vector's BALANCE_CANDIDATES best centroids under the offsets so far; then,
    BALANCE_ROUNDS times, each vector takes the best of its candidates and each centroid's
    offset moves by BALANCE_STEP per unit of log(vectors taken / fair share). The search is
    the assignment's own (assets/dedup/nearest.py): offsets fitted among fixed candidates
    alone favour centroids no candidate list holds, which the assignment then finds."""
    offsets = np.zeros(len(centroids), np.float32)
    if not len(held_out) or len(centroids) < 2:
        return offsets
    search = CentroidSearch(centroids)
    share, rows = len(held_out) / len(centroids), np.arange(len(held_out))
    for _ in range(BALANCE_SEARCHES):
        search.set_offsets(offsets)
        score, candidate = search.search(held_out, BALANCE_CANDIDATES)
        similarity = score + offsets[candidate]
        for _ in range(BALANCE_ROUNDS):
            taken = candidate[rows, np.argmax(similarity - offsets[candidate], axis=1)]
            counts = np.bincount(taken, minlength=len(centroids))
            offsets = (offsets + BALANCE_STEP * np.log((counts + 1) / (share + 1))).astype(np.float32)
    return offsets


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
    if info.get("code_version", "1") != CODE_VERSION:
        return f"trained by clipsieve's centroids code version {info.get('code_version', '1')}, now {CODE_VERSION}"
    if info.get("model_id") != model_id:
        return f"trained for model {info.get('model_id')}"
    if info.get("settings") != settings.digest(*TRAINING_SETTINGS):
        return "cluster_size, max_training_samples, seed or balance_clusters changed"
    trained = max(1, info.get("pool_size", 1))
    if not trained / REGROW_FACTOR <= pool_size <= trained * REGROW_FACTOR:
        return f"the pool has {pool_size} samples, the centroids were trained for {trained}"
    return None


def read_centroids(lake: LakeResource, model_id: str) -> Centroids | None:
    """The committed centroids, or None."""
    path = f"{dedup_dir(model_id)}/centroids.json"
    if not lake.exists(path):
        return None
    info = lake.read_json(path)
    folder = f"{dedup_dir(model_id)}/centroids/{info['version']}"
    vectors = lake.read_npy(f"{folder}/centroids.npy")
    offsets = lake.read_npy(f"{folder}/offsets.npy") if lake.exists(f"{folder}/offsets.npy") else \
        np.zeros(len(vectors), np.float32)
    return Centroids(vectors, offsets, info)


def update_centroids(lake: LakeResource, model_id: str, shards: list[str], settings: DedupSettings) -> dict:
    """Keep the committed centroids if they fit the pool of `shards`, else train and commit
    new ones; their info (`retrained` says which, `reason` why)."""
    sizes = shard_sizes(lake, model_id, shards)
    pool_size = sum(sizes.values())
    committed = read_centroids(lake, model_id)
    reason = retrain_reason(committed.info if committed else None, model_id, pool_size, settings)
    if reason is None:
        return {**committed.info, "retrained": False, "pool_now": pool_size}
    if not pool_size:
        raise ValueError(f"no embedded samples for model {model_id} in the pool yet")
    held_out_limit = int(settings.max_training_samples * HELD_OUT_SHARE) if settings.balance_clusters else 0
    sample, held_out = training_sample(lake, model_id, sizes, settings.max_training_samples, settings.seed,
                                       held_out_limit)
    k = cluster_count(pool_size, settings.cluster_size, len(sample))
    centroids, trained_on = train_centroids(sample, k, settings.seed), len(sample)
    del sample  # the step holds the training sample or the offsets' search, not both
    offsets = balance_offsets(centroids, held_out)
    version = hashlib.sha256(centroids.tobytes() + offsets.tobytes()).hexdigest()[:16]
    folder = dedup_dir(model_id)
    lake.write_npy(f"{folder}/centroids/{version}/centroids.npy", centroids)
    lake.write_npy(f"{folder}/centroids/{version}/offsets.npy", offsets)
    info = {"version": version, "model_id": model_id, "clusters": int(len(centroids)), "pool_size": pool_size,
            "training_samples": trained_on, "held_out_samples": int(len(held_out)),
            "settings": settings.digest(*TRAINING_SETTINGS), "reason": reason, "code_version": CODE_VERSION}
    lake.write_json(f"{folder}/centroids.json", info)
    previous = committed.version if committed else ""
    prune_versions(lake, f"{folder}/centroids", {version, previous})
    return {**info, "retrained": True, "pool_now": pool_size}
