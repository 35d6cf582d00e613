"""The in-memory arithmetic of the pairwise step: candidate pairs within clusters, the
thumbnail check, and duplicate groups with their keepers. Samples are named by integer ids
here; assets/dedup/near_duplicates.py maps them to (shard, key).

The similarities within clusters are most of the step's arithmetic (at 10M samples, tens of
teraflops: a cluster's cost grows with the square of its size). Where bfloat16 products are
faster than float32 ones (CPUs with AVX512-BF16 or AMX: four times here), they pick the
candidates, with a margin wider than bfloat16's error, and each candidate is checked again in
float32: the pairs are the float32 ones either way. Rows read from the 8-bit cluster-major
base (assets/dedup/cluster_base.py) carry a bound on their error: a product within it of the
threshold is a candidate, flagged for the caller to check against the exact vectors.
"""

import functools
import math
import time
from collections.abc import Iterator

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from resources.embedding_files import as_float32

MAX_BLOCK_ENTRIES = 1 << 24  # similarities computed at once (64 MiB of float32)
# Each factor rounded to bfloat16 (8 significant bits) is off by at most 2^-8 of itself, so
# a product of unit vectors moves by at most about 2^-7, and the bfloat16 result near 0.9 is
# within 2^-9 of that: under 0.01 in all, and 1/64 leaves room.
BFLOAT16_MARGIN = 1 / 64
# Fewer vectors than this on one side are multiplied in float32: a bfloat16 copy of the other
# side costs more than it saves (an incremental run meets most clusters with a row or two).
MIN_BFLOAT16_ROWS = 32
RUN_ROWS = 64  # consecutive rows at least this many are multiplied where they lie, not copied


@functools.cache
def bfloat16_is_faster() -> bool:
    """Whether this machine multiplies bfloat16 matrices faster than float32 ones (timed once
    per process on a block the size the pairwise step uses)."""
    left = torch.randn(2048, 512)
    right = torch.randn(512, 2048)

    def seconds(dtype: torch.dtype) -> float:
        a, b = left.to(dtype), right.to(dtype)
        a @ b  # warm up
        start = time.perf_counter()
        for _ in range(3):
            a @ b
        return time.perf_counter() - start

    return seconds(torch.bfloat16) < 0.8 * seconds(torch.float32)


# Product shapes are padded up to one of these sizes (steps of 2^(1/4), under 19% padding):
# oneDNN keeps memory for every matrix shape it has multiplied, and a shape per cluster kept
# 1.5 GiB in the pairwise step at 10M samples.
PADDED_SIZES = np.unique([int(16 * math.ceil(2 ** (k / 4))) for k in range(80)])


def padded(n: int) -> int:
    """The product size `n` rows (or columns) are computed as."""
    return int(PADDED_SIZES[np.searchsorted(PADDED_SIZES, n)])


class Workspace:
    """Buffers the bfloat16 products reuse from one cluster to the next (fresh memory for
    every product is page-faulted in each time)."""

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A tensor of `shape` over the named buffer (grown when too small; contents undefined)."""
        size = math.prod(shape)
        buffer = self.buffers.get(name)
        if buffer is None or buffer.numel() < size or buffer.dtype != dtype:
            grown = max(size, 0 if buffer is None else buffer.numel() * 5 // 4)
            buffer = self.buffers[name] = torch.empty(grown, dtype=dtype)
        return buffer[:size].view(shape)

    def gather_bfloat16(self, name: str, vectors: torch.Tensor, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(copy of `vectors[rows]` in their dtype, bfloat16 copy padded to `padded(len(rows))`
        rows with zeros), in the named buffers."""
        shape = (len(rows), vectors.shape[1])
        exact = torch.index_select(vectors, 0, torch.from_numpy(rows), out=self.take(f"{name}-exact", shape,
                                                                                     vectors.dtype))
        rounded = self.take(f"{name}16", (padded(len(rows)), vectors.shape[1]), torch.bfloat16)
        rounded[:len(rows)].copy_(exact)
        rounded[len(rows):].zero_()
        return exact, rounded


def _above(rows: np.ndarray, cols: np.ndarray, vectors: np.ndarray, threshold: float,
           found: list[tuple[np.ndarray, np.ndarray, np.ndarray]], workspace: Workspace | None = None,
           error: np.ndarray | None = None) -> None:
    """Append (row, col, exact) for every rows x cols product at or above `threshold` (with a
    `workspace`: candidates from bfloat16 products, each checked in float32). With `error`
    (a bound per row, 0 for an exact row), a product with an inexact side is kept when within
    the two bounds of the threshold, and flagged not exact."""
    if not len(rows) or not len(cols):
        return
    slack = 0.0 if error is None else float(error[rows].max() + error[cols].max())
    if workspace is None:
        chunk = max(1, MAX_BLOCK_ENTRIES // len(cols))
        block = as_float32(vectors[cols]).T
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            sims = as_float32(vectors[part]) @ block
            i, j = np.nonzero(sims >= threshold - slack)
            _keep(part[i], cols[j], sims[i, j], threshold, error, found)
        return
    # Torch from here on: numpy's BLAS threads and torch's spin against each other when their
    # calls interleave (seven times slower here).
    table = torch.from_numpy(np.ascontiguousarray(vectors))
    if min(len(rows), len(cols)) < MIN_BFLOAT16_ROWS:
        _above_few(rows, cols, table, threshold - slack, threshold, error, found, workspace)
        return
    chunk = max(1, MAX_BLOCK_ENTRIES // len(cols))
    members, block = workspace.gather_bfloat16("block", table, cols)
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        left, left16 = workspace.gather_bfloat16("left", table, part)
        sims = torch.matmul(left16, block.T, out=workspace.take("sims", (len(left16), len(block)), torch.bfloat16))
        near = torch.ge(sims[:len(part), :len(cols)], threshold - slack - BFLOAT16_MARGIN,
                        out=workspace.take("near", (len(part), len(cols)), torch.bool))
        i, j = torch.nonzero(near, as_tuple=True)
        products = torch.einsum("nd,nd->n", left[i].float(), members[j].float()).numpy()
        _keep(part[i.numpy()], cols[j.numpy()], products, threshold, error, found)


def _above_few(rows: np.ndarray, cols: np.ndarray, table: torch.Tensor, candidate: float, threshold: float,
               error: np.ndarray | None, found: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
               workspace: Workspace) -> None:
    """`_above` where one side has few vectors: float32 products of the many against the few
    (a bfloat16 copy of the many would cost more than it saves)."""
    few, many = (rows, cols) if len(rows) <= len(cols) else (cols, rows)
    small = table[torch.from_numpy(few)]
    for part, block in _blocks(many, table, workspace, max(1, MAX_BLOCK_ENTRIES // len(few))):
        sims = torch.matmul(block, small.T, out=workspace.take("sims32", (len(part), len(few)), torch.float32))
        m, f = torch.nonzero(sims >= candidate, as_tuple=True)
        _keep(part[m.numpy()], few[f.numpy()], sims[m, f].numpy(), threshold, error, found)


def _blocks(positions: np.ndarray, table: torch.Tensor, workspace: Workspace,
            chunk: int) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(positions, their rows of `table`) in blocks of at most `chunk`: a run of RUN_ROWS or
    more consecutive positions as a view of the table (a cluster's rows read from the base lie
    together), the rest gathered into a buffer (valid until the next block)."""
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    scattered = []
    for a, b in zip(np.concatenate([[0], breaks]).tolist(), np.concatenate([breaks, [len(positions)]]).tolist()):
        if b - a < RUN_ROWS:
            scattered.append(positions[a:b])
            continue
        first = int(positions[a])
        for start in range(a, b, chunk):
            stop = min(b, start + chunk)
            yield positions[start:stop], table[first + start - a:first + stop - a]
    rest = np.concatenate(scattered) if scattered else np.zeros(0, np.int64)
    for start in range(0, len(rest), chunk):
        part = rest[start:start + chunk]
        yield part, torch.index_select(table, 0, torch.from_numpy(part),
                                       out=workspace.take("many", (len(part), table.shape[1]), torch.float32))


def _keep(i: np.ndarray, j: np.ndarray, products: np.ndarray, threshold: float, error: np.ndarray | None,
          found: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
    """Append the (i, j, exact) whose float32 products clear the threshold (less the two
    sides' error bounds, where a side is inexact)."""
    bound = np.zeros(len(i), np.float32) if error is None else error[i] + error[j]
    keep = products >= threshold - bound
    found.append((i[keep], j[keep], bound[keep] == 0))


def cluster_pairs(vectors: np.ndarray, clusters: np.ndarray, ids: np.ndarray, visitor: np.ndarray,
                  dirty: np.ndarray, eps: float, bfloat16: bool | None = None,
                  error: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, exact) with a < b (ids) for every pair in one cluster with cosine >= 1 - eps
    (float32 products of the `vectors`, float16 as stored or float32) and at least one dirty
    side. A cluster's own samples are compared with each other and with its visitors;
    visitors are not compared with each other (their own cluster does that).
    `bfloat16`: pick candidates with bfloat16 products (None: where they are faster).
    `error`: a bound per row on its vector's error (0: exact); a pair with an inexact side is a
    candidate within the bounds of the threshold, `exact` False: the caller checks it."""
    bfloat16 = bfloat16_is_faster() if bfloat16 is None else bfloat16
    workspace = Workspace() if bfloat16 else None
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    order = np.argsort(clusters, kind="stable")
    bounds = np.flatnonzero(np.diff(clusters[order])) + 1
    for members in np.split(order, bounds):
        own, visiting = members[~visitor[members]], members[visitor[members]]
        if not dirty[members].any():
            continue
        # Dirty own samples x everything, then clean own samples x dirty visitors.
        _above(own[dirty[own]], members, vectors, 1 - eps, found, workspace, error)
        _above(own[~dirty[own]], visiting[dirty[visiting]], vectors, 1 - eps, found, workspace, error)
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool)
    i = np.concatenate([f[0] for f in found])
    j = np.concatenate([f[1] for f in found])
    exact = np.concatenate([f[2] for f in found])
    a, b = np.minimum(ids[i], ids[j]), np.maximum(ids[i], ids[j])
    distinct = a != b
    return a[distinct], b[distinct], exact[distinct]


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
    """Every (i, j), i < j, with cosine >= 1 - eps (float32 products): the reference the
    clustered search must equal."""
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    everything = np.arange(len(vectors))
    _above(everything, everything, vectors, 1 - eps, found)
    return {(int(i), int(j)) for part in found for i, j in zip(part[0], part[1]) if i < j}
