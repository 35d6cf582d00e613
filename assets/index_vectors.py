"""The vectors an index is built from, read a shard at a time: a subset's members in the
lake (`MemberVectors`), or arrays in memory (`ArrayVectors`, for tests and benchmarks).

Both give the members' keys in index order, their normalized image vectors in chunks (all
of them, or only chosen positions: a training sample, the members added since the last
build), and the text vectors of chosen positions (held-out queries). Nothing holds the
whole set: an index build keeps one shard's vectors beside the index itself.
"""

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from resources.embedding_files import committed_keys, normalized
from resources.lake import LakeResource


@dataclass(frozen=True)
class MemberGroup:
    """A shard's members, at positions [start, start + count) in index order; `version`
    changes when the members or their embeddings do."""
    shard: str
    start: int
    count: int
    version: str


class ArrayVectors:
    """Vectors already in memory, with their keys (key, shard) in the same order."""

    def __init__(self, vectors: np.ndarray, keys: pa.Table | None = None, texts: np.ndarray | None = None):
        self.vectors = normalized(vectors)
        self.count, self.dim = self.vectors.shape
        self._keys = keys if keys is not None else pa.table({
            "key": pa.array([str(i) for i in range(self.count)], pa.string()),
            "shard": pa.array(["-"] * self.count, pa.string())})
        self._texts = texts

    def keys(self) -> pa.Table:
        return self._keys

    def chunks(self, positions: np.ndarray | None = None, size: int = 100_000) -> Iterator[tuple[np.ndarray,
                                                                                                 np.ndarray]]:
        positions = np.arange(self.count) if positions is None else np.sort(positions)
        for start in range(0, len(positions), size):
            part = positions[start:start + size]
            yield part, self.vectors[part]

    def texts(self, positions: np.ndarray) -> np.ndarray:
        return normalized((self._texts if self._texts is not None else self.vectors)[positions])

    def shard_versions(self) -> dict[str, str]:
        return {}

    def groups(self) -> list[MemberGroup]:
        """Runs of members of one shard, in index order; a run's version digests its vectors."""
        shards = self._keys.column("shard").to_numpy(zero_copy_only=False)
        bounds = [0, *(np.flatnonzero(shards[1:] != shards[:-1]) + 1), self.count]
        return [MemberGroup(str(shards[a]), a, b - a, hashlib.sha256(self.vectors[a:b].tobytes()).hexdigest()[:16])
                for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


@dataclass(frozen=True)
class ShardMembers:
    shard: str
    start: int  # position of its first member in index order
    keys: pa.Array  # Arrow strings: a pool's keys as Python strings would take gigabytes
    rows: np.ndarray  # each member's row in the shard's embeddings
    folder: str  # the committed embeddings version's folder
    version: str


class MemberVectors:
    """A subset's members' embeddings, read from the lake a shard at a time (shards in name
    order, members in the subset's order within a shard)."""

    def __init__(self, lake: LakeResource, model_id: str, members: pa.Table):
        self.lake, self.parts = lake, []
        # One stable sort by shard, then a slice per shard (not a scan of every member per shard).
        # Members are usually in shard order already: the take (2.6 s at 10M) is then skipped.
        shards = members.column("shard")
        if members.num_rows > 1 and not pc.all(pc.less_equal(shards.slice(0, members.num_rows - 1),
                                                              shards.slice(1)), skip_nulls=False).as_py():
            members = members.take(pc.sort_indices(members, [("shard", "ascending")]))
        counts = pc.value_counts(members.column("shard")).to_pylist()
        start = 0
        for shard, count in sorted((c["values"], c["counts"]) for c in counts):
            wanted = members.column("key").slice(start, count)
            keys, version, folder = committed_keys(lake, shard, model_id)
            at = pc.index_in(wanted, value_set=keys.column("key"))
            if at.null_count:
                missing = wanted.filter(pc.is_null(at)).to_pylist()
                raise ValueError(f"shard {shard}: {len(missing)} member(s) have no embedding, e.g. {missing[:3]}")
            rows = keys.column("row").take(at).to_numpy()
            self.parts.append(ShardMembers(shard, start, wanted.combine_chunks(), rows, folder, version))
            start += len(rows)
        self.count = start
        self.dim = lake.read_npy_rows(f"{self.parts[0].folder}/img_emb.npy", 0, 1).shape[1] if self.parts else 1

    def keys(self) -> pa.Table:
        return pa.table({
            "key": pa.chunked_array([part.keys for part in self.parts], pa.string()),
            "shard": pa.chunked_array([pa.repeat(pa.scalar(part.shard, pa.string()), len(part.keys))
                                       for part in self.parts], pa.string())})

    def _within(self, part: ShardMembers, positions: np.ndarray | None) -> np.ndarray:
        """Positions (in index order) of `part`'s members among `positions` (all: None)."""
        if positions is None:
            return np.arange(part.start, part.start + len(part.rows))
        lo, hi = np.searchsorted(positions, [part.start, part.start + len(part.rows)])
        return positions[lo:hi]

    def chunks(self, positions: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        positions = None if positions is None else np.sort(positions)
        for part in self.parts:
            mine = self._within(part, positions)
            if len(mine):
                image = self.lake.read_npy(f"{part.folder}/img_emb.npy")
                yield mine, normalized(image[part.rows[mine - part.start]])

    def texts(self, positions: np.ndarray) -> np.ndarray:
        """Text vectors of `positions`, in the order given (ranged reads of single rows)."""
        out = np.empty((len(positions), self.dim), np.float32)
        starts = np.array([part.start for part in self.parts])
        for i, position in enumerate(positions):
            part = self.parts[int(np.searchsorted(starts, position, side="right")) - 1]
            row = int(part.rows[position - part.start])
            out[i] = self.lake.read_npy_rows(f"{part.folder}/text_emb.npy", row, row + 1)[0]
        return normalized(out)

    def groups(self) -> list[MemberGroup]:
        """Each shard's members, in index order; a group's version digests the shard's
        embeddings version and its member keys."""
        return [MemberGroup(part.shard, part.start, len(part.rows), hashlib.sha256(
            "\n".join([part.version, *part.keys.to_pylist()]).encode()).hexdigest()[:16]) for part in self.parts]

    def shard_versions(self) -> dict[str, str]:
        """Each member shard's committed embeddings version."""
        return {part.shard: part.version for part in self.parts}
