"""kNN indices: how they are built (the `indexing` resource) and their files in the lake.

An index lives in `indices/<policy>/<model>/`, committed by `index_info.json`, which names
its version (see assets/indices.py for what the figures in it mean):

    versions/<version>/image.index        an index held in memory (Flat, HNSW)
    versions/<version>/keys.parquet       the key and shard of each index row
    trained/<trained>/trained.index       or an IVF built in parts (assets/index_parts.py): its
                                          trained quantizer and codes, no vectors
    trained/<trained>/parts/<shard>/<part>.index   one shard's members' codes
    trained/<trained>/segments/<s>/populated.index  a run of parts merged, its inverted
    trained/<trained>/segments/<s>/lists.ivfdata    lists on disk, memory-mapped by search
The committed info of an IVF names its segments (each at most `segment_mb`); search opens
them as one index whose lists are the segments' lists stacked.
"""

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow as pa
from dagster import ConfigurableResource
from pydantic import Field

from resources.lake import LakeResource, prune_versions


class IndexResource(ConfigurableResource):
    """How kNN indices are built."""

    memory_budget_mb: int = Field(default=2048, description="Memory the index may take; picks the index type.")
    target_recall: float = Field(default=0.95, description="recall@10 the search parameters are tuned to reach.")
    queries: int = Field(default=500, description="Held-out queries for tuning and measuring recall@10.")
    segment_mb: int = Field(default=512, description="Largest on-disk segment of an IVF built in parts: a merge "
                            "writes at most this much, and a new shard merges only the last segment again.")

    def settings(self) -> "IndexSettings":
        return IndexSettings(self.memory_budget_mb * 2**20, self.target_recall, self.queries,
                             self.segment_mb * 2**20)


@dataclass(frozen=True)
class IndexSettings:
    memory_budget_bytes: int = 2 * 2**30
    target_recall: float = 0.95
    queries: int = 500
    segment_bytes: int = 512 * 2**20


def commit_index(lake: LakeResource, folder: str, version: str, files: dict[str, str], keys: pa.Table,
                 info: dict, extra: dict[str, str] | None = None) -> dict:
    """Upload the local index `files` and `extra` files (lake name: local path) and the row keys
    into versions/<version>/, then write index_info.json, which commits them: a reader sees the
    old index or the new one whole. Returns the info as committed (`memory_bytes`: the index
    files' size, unless `info` says it; `version`)."""
    for name, local in {**files, **(extra or {})}.items():
        target = f"{folder}/versions/{version}/{name}"
        if not (lake.is_local() and os.path.abspath(local) == lake.path(target)):  # else written in place
            lake.write_file(target, local)
    lake.write_parquet(f"{folder}/versions/{version}/keys.parquet", keys)
    previous = lake.read_json(f"{folder}/index_info.json").get("version") \
        if lake.exists(f"{folder}/index_info.json") else None
    committed = {"memory_bytes": sum(os.path.getsize(p) for p in files.values()), **info, "version": version}
    lake.write_json(f"{folder}/index_info.json", committed)
    prune_versions(lake, f"{folder}/versions", {version, previous})
    return committed


def write_index(lake: LakeResource, folder: str, index: faiss.Index, keys: pa.Table, info: dict) -> dict:
    """Commit an in-memory index (one file, image.index) and its row keys, in a version
    folder named by their content (see commit_index)."""
    # faiss writes to a file name: a local temporary, digested and uploaded in pieces, so any
    # lake (or URL) works and the index is never copied whole in memory.
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "image.index")
        faiss.write_index(index, local)
        digest = hashlib.sha256()
        with open(local, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
        digest.update("\n".join(f"{shard}/{key}" for shard, key in zip(keys.column("shard").to_pylist(),
                                                                       keys.column("key").to_pylist())).encode())
        return commit_index(lake, folder, digest.hexdigest()[:16], {"image.index": local}, keys,
                            {**info, "layout": "single"})


def write_faiss(lake: LakeResource, relative: str, index: faiss.Index) -> None:
    """Write a faiss index to a lake file (through a local temporary)."""
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "index")
        faiss.write_index(index, local)
        lake.write_file(relative, local)


def local_file(lake: LakeResource, relative: str, scratch: str) -> str:
    """A local path holding the lake file: the file itself in a local lake, else a copy
    downloaded into the `scratch` folder (faiss opens files by name)."""
    if lake.is_local():
        return lake.path(relative)
    local = os.path.join(scratch, relative.replace("/", "_"))
    if not os.path.exists(local):
        lake.download(relative, local)
    return local


def read_faiss(lake: LakeResource, relative: str) -> faiss.Index:
    """A faiss index from a lake file, whole in memory."""
    with tempfile.TemporaryDirectory() as tmp:
        return faiss.read_index(local_file(lake, relative, tmp))


ON_DISK_FILES = ("populated.index", "lists.ivfdata")  # an IVF segment whose lists faiss maps from disk


def segment_folders(lake: LakeResource, folder: str, segments: list[str], download: bool = True) -> list[str]:
    """Local folders holding the on-disk segments (paths under `folder`): the lake's own in a
    local lake, else a cache under the temporary folder, each segment downloaded once and the
    index's other cached segments removed (`download=False`: only the cache paths, for a
    segment about to be merged there)."""
    if lake.is_local():
        return [lake.path(f"{folder}/{segment}") for segment in segments]
    index_cache = os.path.join(tempfile.gettempdir(), "clipsieve-indices",
                               hashlib.sha256(lake.path(folder).encode()).hexdigest()[:16])
    caches = [os.path.join(index_cache, segment.replace("/", "_")) for segment in segments]
    if not download:
        return caches
    if os.path.isdir(index_cache):
        for other in set(os.listdir(index_cache)) - {os.path.basename(c) for c in caches}:
            shutil.rmtree(os.path.join(index_cache, other), ignore_errors=True)
    for segment, cache in zip(segments, caches):
        if not all(os.path.exists(os.path.join(cache, name)) for name in ON_DISK_FILES):
            os.makedirs(cache, exist_ok=True)
            for name in ON_DISK_FILES:
                lake.download(f"{folder}/{segment}/{name}", os.path.join(cache, name))
    return caches


def open_segments(local_folders: list[str]) -> faiss.Index:
    """One IVF over on-disk segments (local folders holding populated.index + lists.ivfdata,
    all filled from the same trained index): the first segment's index, its lists replaced by
    every segment's lists stacked (faiss's HStackInvertedLists: a probed list is the
    segments' lists of that number, one after the other). Search returns what one merged
    index would."""
    # The index file names its lists file by the path it was merged at; SAME_DIR looks for
    # it beside the index file instead.
    segments = [faiss.read_index(os.path.join(f, "populated.index"), faiss.IO_FLAG_ONDISK_SAME_DIR)
                for f in local_folders]
    if len(segments) == 1:
        return segments[0]
    ivfs = [faiss.extract_index_ivf(segment) for segment in segments]
    lists = faiss.InvertedListsPtrVector()
    for ivf in ivfs:
        lists.push_back(ivf.invlists)
    stacked = faiss.HStackInvertedLists(lists.size(), lists.data())
    # The first segment's own lists now belong to Python (the stack reads them), and the stack
    # and the other segments live as long as the returned index.
    first_lists = ivfs[0].invlists
    ivfs[0].own_invlists = False
    first_lists.this.acquire()
    ivfs[0].replace_invlists(stacked, False)
    total = sum(int(segment.ntotal) for segment in segments)
    ivfs[0].ntotal = segments[0].ntotal = total
    segments[0].referenced_objects = [stacked, first_lists, *segments[1:]]
    return segments[0]


class SegmentedSearch:
    """Many queries at once over on-disk segments, one segment at a time, each segment's top k
    merged into the whole's: what the stacked index (`open_segments`) returns for the same
    search parameters (every segment was filled from one trained index, so a query probes the
    same lists in each), but each segment's lists are read once for the whole batch while
    they are in the page cache, where the stacked index reads the lists of every segment for
    each query in turn: with an index larger than memory, that is reading it from disk once
    per query. The queries' lists are found once, with the first segment's quantizer. Recall
    is measured and search parameters tuned this way; users search the stacked index."""

    def __init__(self, local_folders: list[str]) -> None:
        self.folders = local_folders
        self.parameters = ""

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of each query's top k, best first (ids -1 past the members)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        coarse = None
        for folder in self.folders:
            segment = faiss.read_index(os.path.join(folder, "populated.index"), faiss.IO_FLAG_ONDISK_SAME_DIR)
            if self.parameters:
                faiss.ParameterSpace().set_index_parameters(segment, self.parameters)
            ivf = faiss.extract_index_ivf(segment)
            if coarse is None:  # every segment holds the same quantizer: the lists are found once
                coarse = ivf.quantizer.search(queries, ivf.nprobe)
            found_scores, found_ids = ivf.search_preassigned(queries, k, coarse[1], coarse[0])
            del segment, ivf
            scores, ids = join_top(scores, ids, np.where(found_ids >= 0, found_scores, -np.inf), found_ids, k)
        return scores, ids


def join_top(best: np.ndarray, ids: np.ndarray, scores: np.ndarray, more_ids: np.ndarray,
             k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query's top k of two (scores, ids) lists side by side, best first (ties keep the
    first list's order)."""
    joined = np.concatenate([best, scores], axis=1)
    order = np.argsort(-joined, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(joined, order, axis=1), \
        np.take_along_axis(np.concatenate([ids, more_ids], axis=1), order, axis=1)


def set_search_parameters(index: "faiss.Index | SegmentedSearch", parameters: str) -> None:
    """Set faiss search parameters ("nprobe=16,quantizer_efSearch=64") on an index or a
    segmented search."""
    if isinstance(index, SegmentedSearch):
        index.parameters = parameters
    else:
        faiss.ParameterSpace().set_index_parameters(index, parameters)


def read_index(lake: LakeResource, folder: str, info: dict | None = None) -> tuple[faiss.Index, pa.Table]:
    """The committed index with its tuned search parameters applied, and its row keys (`info`:
    its index_info.json, when the caller has read it already). An IVF built in parts is opened
    with its lists memory-mapped from its segments' lists.ivfdata: searching it does not read
    the whole index."""
    info = info if info is not None else lake.read_json(f"{folder}/index_info.json")
    if "version" not in info or (info.get("layout") == "on_disk" and "segments" not in info):
        raise ValueError(f"{lake.path(folder)} was written by an older clipsieve: materialize its index again")
    files = f"{folder}/versions/{info['version']}"
    if info.get("layout") == "on_disk":
        index = open_segments(segment_folders(lake, folder, [s["folder"] for s in info["segments"]]))
    elif lake.is_local():  # faiss reads the file itself: no copy of it in memory first
        index = faiss.read_index(lake.path(f"{files}/image.index"))
    else:
        index = faiss.deserialize_index(np.frombuffer(lake.read_bytes(f"{files}/image.index"), dtype=np.uint8))
    if info.get("search_params"):
        faiss.ParameterSpace().set_index_parameters(index, info["search_params"])
    return index, lake.read_parquet(f"{files}/keys.parquet")
