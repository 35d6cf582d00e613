"""An IVF index built in parts, one per shard, merged into segments whose inverted lists stay
on disk (faiss's on-disk merge, as autofaiss builds large indices).

    trained/<t>/trained.index             the quantizer (IVF centroids) and codes (SQ, PQ),
                                          trained once on a bounded sample of the members
    trained/<t>/parts/<shard>/<p>.index   one shard's members' codes and ids (no quantizer);
                                          <p> digests the trained version, the shard's
                                          embeddings version, its member keys and its first
                                          position (ids are positions in index order)
    trained/<t>/segments/<s>/populated.index   a run of parts merged: the trained index,
    trained/<t>/segments/<s>/lists.ivfdata     pointing at its lists on disk
    versions/<v>/recall_truth.npz         the held-out queries and their exact top 20

A refresh encodes only the shards whose part is missing (new shards appended at the end,
or shards whose members or embeddings changed, and the shards after them, whose positions
moved). The parts are packed in order into segments of at most `segment_bytes` of codes
and ids (a part larger than that is a segment alone). The packing of a run of parts does
not depend on the parts after it, so appending a shard changes only the last segment (or
starts a new one): a shard added to a large index costs its own codes and one segment's
copy, and no merge maps more than one segment's file, whatever the index's size. Search
stacks the segments' lists (resources/indexing.py `open_segments`); recall is measured a
segment at a time (`SegmentedSearch`: the same results, each segment read once for all the
held-out queries), so the build's memory is bounded by a segment too.

The quantizer is trained again only when it no longer fits, and the metadata says why
(`rebuild_reason`): there is none yet, the member count moved the index to another type
(another list count or code size), new members lie further from the centroids than the
training sample did (drift), or the index's recall@10 on held-out queries fell below the
target with the best search parameters tried, where it reached the target when the
quantizer was trained (an index whose codes never reach it, as product codes may not, is
not retrained on every refresh for it).

Recall is measured against exact search over all members. The held-out queries and their
exact top 20 are kept with each version (recall_truth.npz); when the members only grew at
the end (new shards after the old ones), the truth is updated with the new members alone
instead of searching everything again. The exact search runs on the vectors the parts'
encoding reads, so a build reads the embeddings once for both. Recall is measured again
(and the search parameters re-tuned, from the last ones up) once the members have grown
`RECHECK_GROWTH` since it was last measured: `recall_members` says at how many.
"""

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable

import faiss
import numpy as np
from faiss.contrib.ondisk import merge_ondisk

from assets.index_vectors import ArrayVectors, MemberGroup, MemberVectors
from assets.indices import (
    centroid_similarity,
    drift_reason,
    held_out_queries,
    merge_top,
    train_index,
    training_sample,
    tune,
)
from resources.indexing import (
    ON_DISK_FILES,
    IndexSettings,
    SegmentedSearch,
    commit_index,
    local_file,
    read_faiss,
    segment_folders,
    write_faiss,
)
from resources.lake import LakeResource, prune_versions

Vectors = ArrayVectors | MemberVectors
TRUTH_DEPTH = 20  # exact neighbours kept per held-out query: recall@10 with room for ties
RECHECK_GROWTH = 0.05  # recall is measured again once the members grew this much since it last was


def _digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def part_path(folder: str, trained: str, group: MemberGroup) -> str:
    """Where a shard's part lives; named by what it holds (its rows carry their positions in
    index order as ids, so a part moves with its start: shards are appended at the end)."""
    name = _digest(trained, group.shard, group.version, str(group.start))
    return f"{folder}/trained/{trained}/parts/{group.shard}/{name}.index"


def _retrain_reason(old: dict | None, factory: str, dim: int) -> str | None:
    """Why the committed trained index cannot take the members, or None when it can."""
    trained = (old or {}).get("trained")
    if not trained:
        return f"index type changes from {old['factory']} to {factory}" if old and "factory" in old \
            else "no previous index"
    if trained.get("factory") != factory or trained.get("dim") != dim:
        return f"index type changes from {trained.get('factory')} to {factory}"
    return None


def _train(lake: LakeResource, folder: str, source: Vectors, factory: str, reason: str,
           seed: int) -> tuple[faiss.Index, dict]:
    """Train an empty index on a sample of the members and store it; its record."""
    started = time.perf_counter()
    sample = training_sample(source, seed)
    index = train_index(source, factory, seed, sample)
    version = hashlib.sha256(faiss.serialize_index(index).tobytes()).hexdigest()[:16]
    write_faiss(lake, f"{folder}/trained/{version}/trained.index", index)
    # The sample is in index order (shard by shard): measure a random part of it.
    probe = sample[np.random.default_rng(seed + 1).choice(len(sample), min(len(sample), 20_000), replace=False)]
    similarity = float(faiss.extract_index_ivf(index).quantizer.search(probe, 1)[0].mean())
    return index, {"version": version, "factory": factory, "dim": source.dim, "members": source.count,
                   "reason": reason, "seconds": round(time.perf_counter() - started, 2),
                   "centroid_similarity": similarity}


def _fill_parts(lake: LakeResource, folder: str, trained: faiss.Index, version: str, source: Vectors,
                log: Callable[[str], None],
                read: Callable[[np.ndarray, np.ndarray], None]) -> tuple[list[str], np.ndarray]:
    """Each group's part path, encoding the parts that are missing (each block of vectors read
    is passed to `read` too); the positions newly encoded."""
    paths, encoded = [], []
    for group in source.groups():
        path = part_path(folder, version, group)
        paths.append(path)
        if lake.exists(path):
            continue
        part = faiss.clone_index(trained)
        positions = np.arange(group.start, group.start + group.count)
        for chunk, vectors in source.chunks(positions):
            part.add_with_ids(vectors, chunk)
            read(chunk, vectors)
        # Only the lists are merged: an empty quantizer keeps the trained one (32 MiB at
        # 16k lists) out of every part file. It is put back before the part is freed, which
        # frees it with the part.
        ivf = faiss.extract_index_ivf(part)
        quantizer, empty = ivf.quantizer, faiss.IndexFlat(source.dim, ivf.metric_type)
        ivf.quantizer = empty
        write_faiss(lake, path, part)
        ivf.quantizer = quantizer
        del part
        encoded.append(positions)
        log(f"encoded the part of shard {group.shard} ({group.count} members)")
    return paths, np.concatenate(encoded) if encoded else np.zeros(0, np.int64)


def plan_segments(counts: list[int], member_bytes: int, segment_bytes: int) -> list[tuple[int, int]]:
    """The [start, stop) part ranges of the segments: parts packed in order, a new segment
    started when the next part would take the current one past `segment_bytes` (parts of
    `counts` members, `member_bytes` each). Appending parts leaves every range but the
    last as it was."""
    ranges, start, used = [], 0, 0
    for part, count in enumerate(counts):
        size = count * member_bytes
        if part > start and used + size > segment_bytes:
            ranges.append((start, part))
            start, used = part, 0
        used += size
    return ranges + [(start, len(counts))] if counts else []


def _merge_segment(lake: LakeResource, folder: str, trained: faiss.Index, version: str, parts: list[str],
                   scratch: str) -> str:
    """The segment of `parts` (merging them unless it exists); its path under `folder`."""
    segment = f"trained/{version}/segments/{_digest(version, *parts)}"
    if lake.exists(f"{folder}/{segment}/populated.index"):
        return segment
    # A local lake's segment is merged in place; another lake's in the local cache search
    # opens, then uploaded (the index file last: a segment is whole once it exists).
    out = segment_folders(lake, folder, [segment], download=False)[0]
    shutil.rmtree(out, ignore_errors=True)  # left by a merge that stopped half way
    os.makedirs(out)
    index = faiss.clone_index(trained)
    merge_ondisk(index, [local_file(lake, p, scratch) for p in parts], os.path.join(out, "lists.ivfdata"))
    faiss.write_index(index, os.path.join(out, "populated.index"))
    del index
    if not lake.is_local():
        for name in ("lists.ivfdata", "populated.index"):
            lake.write_file(f"{folder}/{segment}/{name}", os.path.join(out, name))
    return segment


class _Truth:
    """The held-out queries' exact top TRUTH_DEPTH over the members from `start` on, joined
    with `scores`/`positions` (the old truth over the members before `start`). It takes the
    vectors the parts' encoding reads; `complete` reads the members it did not see: a full
    build reads the embeddings once for both."""

    def __init__(self, queries: np.ndarray, scores: np.ndarray, positions: np.ndarray, start: int, count: int,
                 mode: str) -> None:
        self.queries, self.scores, self.positions, self.mode = queries, scores, positions, mode
        self.start, self.seen = start, np.zeros(count - start, bool)

    def add(self, positions: np.ndarray, vectors: np.ndarray) -> None:
        mine = positions >= self.start
        if not mine.all():  # a block the old truth covers in part (a full build's never is)
            positions, vectors = positions[mine], vectors[mine]
        if len(positions):
            self.scores, self.positions = merge_top(self.scores, self.positions, self.queries @ vectors.T,
                                                    positions, TRUTH_DEPTH)
            self.seen[positions - self.start] = True

    def complete(self, source: Vectors) -> "_Truth":
        missing = np.flatnonzero(~self.seen) + self.start
        if len(missing):
            for positions, vectors in source.chunks(missing):
                self.add(positions, vectors)
        return self


def _start_truth(lake: LakeResource, folder: str, old: dict | None, source: Vectors, groups: list[MemberGroup],
                 settings: IndexSettings, seed: int) -> _Truth:
    """The truth to build: the old one extended by the members added after the old ones, when
    the old members are a prefix of the new; else a fresh one."""
    old_groups = [tuple(g) for g in (old or {}).get("groups", [])]
    new_groups = [(g.shard, g.version, g.count) for g in groups]
    path = f"{folder}/versions/{(old or {}).get('version')}/recall_truth.npz"
    if old_groups and new_groups[:len(old_groups)] == old_groups and lake.exists(path):
        with tempfile.TemporaryDirectory() as tmp, np.load(local_file(lake, path, tmp)) as saved:
            queries, best, rows = saved["queries"], saved["scores"], saved["positions"]
        return _Truth(queries, best, rows, sum(count for _, _, count in old_groups), source.count, "extended")
    queries = held_out_queries(source, settings.queries, seed)
    depth = min(TRUTH_DEPTH, source.count)
    return _Truth(queries, np.full((len(queries), depth), -np.inf, np.float32),
                  np.full((len(queries), depth), -1, np.int64), 0, source.count, "searched")


def update_parted_index(lake: LakeResource, folder: str, source: Vectors, factory: str, settings: IndexSettings,
                        old: dict | None, seed: int = 0, log: Callable[[str], None] = lambda message: None,
                        extra_info: dict | None = None) -> dict:
    """Bring the on-disk IVF index in `folder` up to the members of `source` and commit it;
    the committed info (old: the previous index_info.json, if any)."""
    groups = source.groups()
    reason = _retrain_reason(old, factory, source.dim)
    started = time.perf_counter()
    for _attempt in range(2):
        if reason is None:
            record = old["trained"]
            trained = read_faiss(lake, f"{folder}/trained/{record['version']}/trained.index")
        else:
            trained, record = _train(lake, folder, source, factory, reason, seed)
        truth = _start_truth(lake, folder, old, source, groups, settings, seed)
        parts, encoded = _fill_parts(lake, folder, trained, record["version"], source, log, truth.add)
        if reason is None and len(encoded):
            sample = encoded[np.random.default_rng(seed).choice(len(encoded), min(len(encoded), 20_000), False)]
            reason = drift_reason(record.get("centroid_similarity"), centroid_similarity(trained, source, sample))
            if reason:
                continue
        truth.complete(source)
        queries, scores, positions, truth_mode = truth.queries, truth.scores, truth.positions, truth.mode
        # Named by what it is made of and how it is tuned: the same inputs, the same folder.
        version = _digest(record["version"], *parts, str(settings.target_recall), str(settings.queries))
        if old and reason is None and old.get("version") == version:
            # The committed index is this one: only its record is refreshed.
            committed = {**old, "build_mode": "unchanged", "encoded": 0, **(extra_info or {})}
            committed.pop("rebuild_reason", None)
            lake.write_json(f"{folder}/index_info.json", committed)
            return committed
        with tempfile.TemporaryDirectory() as tmp:
            member_bytes = faiss.extract_index_ivf(trained).code_size + 8  # codes and an int64 id
            ranges = plan_segments([g.count for g in groups], member_bytes, settings.segment_bytes)
            segments = [{"folder": _merge_segment(lake, folder, trained, record["version"], parts[a:b], tmp),
                         "parts": [a, b], "count": sum(g.count for g in groups[a:b])} for a, b in ranges]
            local = segment_folders(lake, folder, [s["folder"] for s in segments])
            index = SegmentedSearch(local)
            measured_at = (old or {}).get("recall_members", 0)
            if reason is None and truth_mode == "extended" and source.count <= measured_at * (1 + RECHECK_GROWTH) \
                    and old.get("target_recall") == settings.target_recall:
                # Grown by a little at the end: the last measured recall and parameters stand.
                params, recall = old["search_params"], old["recall_at_10"]
            else:
                k, measured_at = min(10, source.count), source.count
                params, recall = tune(index, factory, queries, (scores, positions), settings.target_recall, k,
                                      start=None if reason else (old or {}).get("search_params"))
            if reason is None and recall < settings.target_recall <= record.get("recall_at_10", 0.0):
                reason = (f"recall@10 fell to {recall:.3f}, below the target {settings.target_recall}, with the "
                          f"index trained on {record['members']} members")
                continue
            if reason is not None:  # what the fresh quantizer reached: a later fall below the target retrains
                record = {**record, "recall_at_10": recall}
            np.savez(os.path.join(tmp, "recall_truth.npz"), queries=queries, scores=scores, positions=positions)
            info = {
                "factory": factory, "search_params": params, "metric": "inner_product", "layout": "on_disk",
                "count": sum(s["count"] for s in segments), "dim": int(source.dim), "recall_at_10": recall,
                "recall_queries": int(len(queries)), "recall_truth": truth_mode, "recall_members": measured_at,
                "target_recall": settings.target_recall,
                "build_seconds": round(time.perf_counter() - started, 4),
                "build_mode": "rebuilt" if reason else "grown", "encoded": int(len(encoded)),
                "parts": parts, "segments": segments, "trained": record,
                "centroid_similarity": record["centroid_similarity"],
                "groups": [[g.shard, g.version, g.count] for g in groups],
                "memory_bytes": sum(os.path.getsize(os.path.join(f, name)) for f in local for name in ON_DISK_FILES),
                **({"rebuild_reason": reason} if reason else {}), **(extra_info or {}),
            }
            committed = commit_index(lake, folder, version, {}, source.keys(), info,
                                     extra={"recall_truth.npz": os.path.join(tmp, "recall_truth.npz")})
        _prune(lake, folder, committed, old)
        return committed
    raise AssertionError("a freshly trained index is not checked again")  # the loop returns on its second pass


def _prune(lake: LakeResource, folder: str, committed: dict, old: dict | None) -> None:
    """Remove trained indices, parts and segments that neither the committed nor the previous
    index uses."""
    kept = {committed["trained"]["version"], ((old or {}).get("trained") or {}).get("version")}
    prune_versions(lake, f"{folder}/trained", {v for v in kept if v})
    trained = committed["trained"]["version"]
    wanted = set(committed["parts"])
    segments = {s["folder"].rsplit("/", 1)[1] for s in committed["segments"]}
    if old and (old.get("trained") or {}).get("version") == trained:
        wanted |= set(old.get("parts", []))
        segments |= {s["folder"].rsplit("/", 1)[1] for s in old.get("segments", [])}
    for path in lake.glob(f"{folder}/trained/{trained}/parts/*/*.index"):
        if path not in wanted:
            lake.remove(path)
    prune_versions(lake, f"{folder}/trained/{trained}/segments", segments)
