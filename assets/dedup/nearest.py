"""Each vector's most similar centroids, as matrix products.

With a few thousand centroids one product (vectors x centroids) is the whole search. With
tens of thousands it is the assignment's cost: 10M vectors against 50,000 512-d centroids is
half a petaflop. From `TWO_LEVEL_FROM` centroids the search is two-level: the centroids are
grouped into about sqrt(k) cells (k-means over the centroids), each vector is compared with
the cell centres, then with the centroids of its `PROBES` most similar cells only. Both
levels are matrix products (one per cell for the second), so BLAS does the work: assigning
10M vectors to 50,000 centroids took 360.7 s this way and 1,465.5 s through faiss's IVF
over the centroids, which scans lists query by query.

With offsets (one per centroid, assets/dedup/centroids.py) a vector's score against a
centroid is its similarity minus the centroid's offset, and the best scores win; a cell is
still probed by plain similarity to its centre.

The two-level search can miss a vector's true nearest when it lies in a cell not probed;
the vector then goes to the nearest it found (a neighbouring cluster), and the pairwise
step's boundary visits still meet most of its pairs. tests/test_dedup.py measures the
agreement with exact search and the pairs against brute force.
"""

import math

import numpy as np

from assets.kmeans import spherical_kmeans

TWO_LEVEL_FROM = 4096  # centroids from which the search is two-level
PROBES = 8  # cells whose centroids each vector is compared with
CHUNK = 65_536  # vectors searched at once (their similarity blocks stay tens of MiB)


class CentroidSearch:
    """The `nearest` best-scoring unit centroids of unit vectors (score: similarity minus the
    centroid's offset), exact or two-level."""

    def __init__(self, centroids: np.ndarray, seed: int = 0, offsets: np.ndarray | None = None) -> None:
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.cells: np.ndarray | None = None
        if len(self.centroids) >= TWO_LEVEL_FROM:
            cells = spherical_kmeans(self.centroids, int(math.ceil(math.sqrt(len(self.centroids)))), seed)
            cell_of = np.argmax(self.centroids @ cells.T, axis=1)
            # Centroids stored cell by cell: a cell's centroids are one contiguous block.
            self.order = np.argsort(cell_of, kind="stable")
            self.grouped = np.ascontiguousarray(self.centroids[self.order])
            self.bounds = np.searchsorted(cell_of[self.order], np.arange(len(cells) + 1))
            self.cells = np.ascontiguousarray(cells, dtype=np.float32)
        self.set_offsets(np.zeros(len(self.centroids), np.float32) if offsets is None else offsets)

    def set_offsets(self, offsets: np.ndarray) -> None:
        """Score against the centroids with these offsets from now on."""
        self.offsets = np.asarray(offsets, dtype=np.float32).copy()
        if self.cells is not None:
            self.grouped_offsets = self.offsets[self.order]

    @property
    def two_level(self) -> bool:
        return self.cells is not None

    def search(self, vectors: np.ndarray, nearest: int) -> tuple[np.ndarray, np.ndarray]:
        """(score float32, centroid int64), each (n, nearest), best first (without offsets the
        score is the similarity)."""
        nearest = min(nearest, len(self.centroids))
        found = [self._search(np.ascontiguousarray(vectors[start:start + CHUNK], dtype=np.float32), nearest)
                 for start in range(0, len(vectors), CHUNK)]
        if not found:
            return np.zeros((0, nearest), np.float32), np.zeros((0, nearest), np.int64)
        return np.concatenate([s for s, _ in found]), np.concatenate([c for _, c in found])

    def _search(self, vectors: np.ndarray, nearest: int) -> tuple[np.ndarray, np.ndarray]:
        if self.cells is None:
            return top_columns(vectors @ self.centroids.T - self.offsets, nearest, np.arange(len(self.centroids)))
        n, probes = len(vectors), min(PROBES, len(self.cells))
        probed = top_columns(vectors @ self.cells.T, probes, np.arange(len(self.cells)))[1]
        # One slot per (vector, probed cell), visited cell by cell.
        slot_cell, slot_row = probed.ravel(), np.repeat(np.arange(n), probes)
        by_cell = np.argsort(slot_cell, kind="stable")
        edges = np.searchsorted(slot_cell[by_cell], np.arange(len(self.cells) + 1))
        similarity = np.full((n * probes, nearest), -np.inf, np.float32)
        centroid = np.zeros((n * probes, nearest), np.int64)
        for cell in range(len(self.cells)):
            lo, hi = self.bounds[cell], self.bounds[cell + 1]
            if edges[cell] == edges[cell + 1] or lo == hi:
                continue
            slots = by_cell[edges[cell]:edges[cell + 1]]
            take = min(nearest, hi - lo)
            similarity[slots, :take], centroid[slots, :take] = top_columns(
                vectors[slot_row[slots]] @ self.grouped[lo:hi].T - self.grouped_offsets[lo:hi], take,
                self.order[lo:hi])
        # Each vector's best `nearest` of its probes x nearest candidates.
        return top_columns(similarity.reshape(n, -1), nearest, centroid.reshape(n, -1))


def top_columns(similarity: np.ndarray, count: int, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The `count` largest entries of each row, largest first (ties: the first column), and
    their labels (`labels`: one per column, or one per entry). The searches take a few
    columns of a few hundred: `count` argmax passes, each masking what it found, are ten
    times faster there than argpartition and argsort."""
    count = min(count, similarity.shape[1])
    remaining = similarity.copy()
    rows = np.arange(len(remaining))
    columns = np.empty((len(remaining), count), np.int64)
    values = np.empty((len(remaining), count), remaining.dtype)
    for rank in range(count):
        columns[:, rank] = remaining.argmax(axis=1)
        values[:, rank] = remaining[rows, columns[:, rank]]
        remaining[rows, columns[:, rank]] = -np.inf
    picked = labels[columns] if labels.ndim == 1 else np.take_along_axis(labels, columns, axis=1)
    return values, picked.astype(np.int64)
