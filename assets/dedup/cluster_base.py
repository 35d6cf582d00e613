"""The cluster-major copy of the pool's assigned vectors, which incremental pairwise runs read.

A shard's assignment files are in cluster order within the shard, so the pool's rows of one
cluster lie in every shard's files, interleaved with the other clusters' a few rows at a time:
reading the clusters one new shard touches meant reading nearly every byte of every shard
(20 GB at 10M samples for a shard of 10,000). A pass that reads every cluster (a full run, or
an incremental one whose shards outside the base have grown past `rebase_share` of the pool)
writes the rows once more, cluster after cluster across the shards: an incremental run then
reads each touched cluster with one ranged read of the base, and only the shards outside it
(new or changed since) from their own files.

The base holds each vector in 8 bits (a byte a dimension, a scale per row): an incremental run
reads the clusters of a new shard, most of the base's bytes, so half the bytes is about half
the time. Each row also keeps a bound on its rounding error: a product with a unit vector is
off by at most that bound, so a pair whose 8-bit product comes within it of the threshold is
a candidate, checked against the exact (float16) vectors in the shards' own files.

    dedup/<model>/base/<version>/codes-<n>.npy     int8 rows of cluster range n, by cluster
    dedup/<model>/base/<version>/scales-<n>.npy    float32 (scale, error bound) per row
    dedup/<model>/base/<version>/rows-<n>.npy      int32 (cluster, shard number, row, visitor)
    dedup/<model>/base/<version>/counts.npy        int64 rows per cluster

The near-duplicate state names its base: {"version", "shards": [[shard, assignment version],
...], "ranges": [[lo, hi], ...], "dim", "format"}; a row's shard number indexes that list. The
base is a second copy of the assigned vectors (a byte a dimension per row, visits included).
"""

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from resources.lake import LakeResource, dedup_dir

FORMAT = "int8"  # a base written in another format is not read: the next run writes one
READ_ROWS = 1 << 16  # rows read from the base at once (32 MiB of codes at 512-d)
WRITE_ROWS = 1 << 16  # rows written at once
QUANTIZE_ROWS = 1 << 10  # rows gathered and quantized at once: the temporaries stay in cache
                         # (64k-row blocks took four times as long)
# The error bound is rounded up by this much: it must hold for the float32 products too.
ERROR_SLACK = 1e-5


def quantize(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 codes, float32 (scale, error bound) per row) of float32 rows: codes * scale is
    the row to within its error bound in Euclidean norm, so its product with any unit vector
    is within the bound of the exact one. Every bound is positive: a row read from the base is
    never taken as exact. Fastest on about QUANTIZE_ROWS rows at a time."""
    rows = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    peak = rows.abs().amax(dim=1) if len(rows) else torch.zeros(0)
    scale = torch.where(peak > 0, peak / 127, torch.ones_like(peak))
    codes = torch.round(rows / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    error = torch.linalg.vector_norm(rows - codes.float() * scale[:, None], dim=1) + ERROR_SLACK
    return codes.numpy(), torch.stack([scale, error], dim=1).numpy()


def dequantize(codes: np.ndarray, scales: np.ndarray, out: np.ndarray) -> None:
    """codes * scale into the float32 `out` (torch's vectorized copy: a pass over GBs per run)."""
    target = torch.from_numpy(out)
    target.copy_(torch.from_numpy(codes))
    target.mul_(torch.from_numpy(np.ascontiguousarray(scales[:, 0]))[:, None])


def base_folder(model_id: str, version: str) -> str:
    return f"{dedup_dir(model_id)}/base/{version}"


@dataclass
class BaseUse:
    """How this run's shards map onto a committed base."""
    record: dict
    part_of_number: np.ndarray  # int64 per base shard number: this run's part index, or -1 (left out)
    based: np.ndarray  # bool per part: its rows are read from the base
    counts: np.ndarray  # int64 rows per cluster in the base (left-out shards' rows included)


def use_base(lake: LakeResource, model_id: str, record: dict | None,
             parts: list[tuple[str, str, bool]]) -> BaseUse | None:
    """Map `parts` ((shard, assignment version, dirty) each) onto the base `record` names: a
    clean part at the version the base holds is read from it; the base's other rows (a changed
    or departed shard's) are left out. None without a base (or with its files gone: the run
    then reads every cluster and writes one)."""
    if not record or record.get("format") != FORMAT \
            or not lake.exists(f"{base_folder(model_id, record['version'])}/counts.npy"):
        return None
    number_of = {(shard, version): number for number, (shard, version) in enumerate(record["shards"])}
    part_of_number = np.full(len(record["shards"]), -1, np.int64)
    based = np.zeros(len(parts), bool)
    for index, (shard, version, dirty) in enumerate(parts):
        number = number_of.get((shard, version))
        if number is not None and not dirty:
            part_of_number[number] = index
            based[index] = True
    counts = lake.read_npy(f"{base_folder(model_id, record['version'])}/counts.npy")
    return BaseUse(record, part_of_number, based, counts)


def read_clusters(lake: LakeResource, model_id: str, use: BaseUse, wanted: np.ndarray, lo: int,
                  hi: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(int8 codes, float32 (scale, error bound), int32 (cluster, part index, row, visitor)
    rows) of the based parts' rows of the `wanted` clusters in [lo, hi), a block at a time:
    one ranged read per run of consecutive wanted clusters, the left-out shards' rows dropped. Each block is read into
    the same buffers: it is valid until the next one is asked for."""
    folder = base_folder(model_id, use.record["version"])
    staged_codes = np.empty((0, use.record["dim"]), np.int8)
    staged_scales = np.empty((0, 2), np.float32)
    staged_rows = np.empty((0, 4), np.int32)
    for number, (range_lo, range_hi) in enumerate(use.record["ranges"]):
        a, b = max(lo, range_lo), min(hi, range_hi)
        if a >= b:
            continue
        starts = np.concatenate([[0], np.cumsum(use.counts[range_lo:range_hi])])
        clusters = np.flatnonzero(wanted[a:b] & (use.counts[a:b] > 0)) + a
        if not len(clusters):
            continue
        first, last = starts[clusters - range_lo], starts[clusters - range_lo + 1]
        # Runs of consecutive clusters are one read.
        joined = np.flatnonzero(first[1:] != last[:-1]) + 1
        runs = list(zip(first[np.concatenate([[0], joined])].tolist(),
                        last[np.concatenate([joined - 1, [len(last) - 1]])].tolist()))
        for batch in _batches(runs, READ_ROWS):
            size = sum(b - a for a, b in batch)
            if size > len(staged_rows):
                staged_codes = np.empty((size, use.record["dim"]), np.int8)
                staged_scales = np.empty((size, 2), np.float32)
                staged_rows = np.empty((size, 4), np.int32)
            rows = lake.read_npy_runs(f"{folder}/rows-{number}.npy", batch, out=staged_rows)
            codes = lake.read_npy_runs(f"{folder}/codes-{number}.npy", batch, out=staged_codes)
            scales = lake.read_npy_runs(f"{folder}/scales-{number}.npy", batch, out=staged_scales)
            part = use.part_of_number[rows[:, 1]]
            keep = part >= 0
            if keep.all():  # nearly always: copy nothing
                rows[:, 1] = part
                yield codes, scales, rows
            else:
                rows = rows[keep]
                rows[:, 1] = part[keep]
                yield codes[keep], scales[keep], rows


def _batches(runs: list[tuple[int, int]], rows: int) -> Iterator[list[tuple[int, int]]]:
    """The runs in consecutive groups of about `rows` rows (a longer run alone)."""
    batch, size = [], 0
    for a, b in runs:
        if batch and size + (b - a) > rows:
            yield batch
            batch, size = [], 0
        batch.append((a, b))
        size += b - a
    if batch:
        yield batch


class BaseWriter:
    """Writes a new base, range by range, from the rows a pass over every cluster reads."""

    def __init__(self, lake: LakeResource, model_id: str, shards: list[tuple[str, str]], clusters: int,
                 replacing: str | None) -> None:
        self.lake, self.model_id, self.shards = lake, model_id, shards
        # Named by what it holds and the base it replaces (`replacing`, read while this one is
        # written): never that one's name, and the same inputs give the same name.
        digest = hashlib.sha256(json.dumps([replacing, shards]).encode())
        self.version = digest.hexdigest()[:16]
        self.counts = np.zeros(clusters, np.int64)
        self.ranges: list[list[int]] = []
        self.dim = 0

    def add_range(self, lo: int, hi: int, vectors: np.ndarray, clusters: np.ndarray, shard_numbers: np.ndarray,
                  rows: np.ndarray, visitor: np.ndarray) -> None:
        """Every row of clusters [lo, hi): its vector, cluster, shard number, row and visitor flag."""
        # By cluster, and within one its own rows before its visitors: each lies in one run.
        order = np.lexsort((visitor, clusters))
        folder, number = base_folder(self.model_id, self.version), len(self.ranges)
        table = np.stack([clusters[order], shard_numbers[order], rows[order], visitor[order]], axis=1)
        self.lake.write_npy(f"{folder}/rows-{number}.npy", table.astype(np.int32))
        scales = np.empty((len(order), 2), np.float32)

        def blocks() -> Iterator[np.ndarray]:
            for at in range(0, len(order), WRITE_ROWS):
                block = order[at:at + WRITE_ROWS]
                codes = np.empty((len(block), vectors.shape[1]), np.int8)
                for start in range(0, len(block), QUANTIZE_ROWS):
                    rows = slice(start, start + QUANTIZE_ROWS)
                    codes[rows], scales[at + start:at + start + len(block[rows])] = quantize(vectors[block[rows]])
                yield codes

        self.lake.write_npy_parts(f"{folder}/codes-{number}.npy", (len(order), vectors.shape[1]), np.int8,
                                  blocks())
        self.lake.write_npy(f"{folder}/scales-{number}.npy", scales)
        self.counts[lo:hi] = np.bincount(clusters - lo, minlength=hi - lo)
        self.dim = vectors.shape[1]
        self.ranges.append([lo, hi])

    def finish(self) -> dict:
        """Write the counts; the base's record (for the state to commit)."""
        self.lake.write_npy(f"{base_folder(self.model_id, self.version)}/counts.npy", self.counts)
        return {"version": self.version, "shards": [list(s) for s in self.shards], "ranges": self.ranges,
                "dim": self.dim, "format": FORMAT}
