"""kNN indices: how they are built (the `indexing` resource) and their files in the lake.

An index lives in `indices/<policy>/<model>/`: `versions/<version>/image.index` (faiss) and
`keys.parquet` (the key and shard of each index row), committed by `index_info.json`, which
names the version (see assets/indices.py for what the figures in it mean).
"""

import hashlib
import os
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

    def settings(self) -> "IndexSettings":
        return IndexSettings(self.memory_budget_mb * 2**20, self.target_recall, self.queries)


@dataclass(frozen=True)
class IndexSettings:
    memory_budget_bytes: int = 2 * 2**30
    target_recall: float = 0.95
    queries: int = 500


def write_index(lake: LakeResource, folder: str, index: faiss.Index, keys: pa.Table, info: dict) -> dict:
    """Write the index and its keys into a version folder named by their content, then
    index_info.json, which commits them: a reader sees the old index or the new one whole.
    Returns the info as committed (with `memory_bytes`, the index file's size, and `version`)."""
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
        version = digest.hexdigest()[:16]
        lake.write_file(f"{folder}/versions/{version}/image.index", local)
        size = os.path.getsize(local)
    lake.write_parquet(f"{folder}/versions/{version}/keys.parquet", keys)
    previous = lake.read_json(f"{folder}/index_info.json").get("version") \
        if lake.exists(f"{folder}/index_info.json") else None
    committed = {**info, "memory_bytes": size, "version": version}
    lake.write_json(f"{folder}/index_info.json", committed)
    prune_versions(lake, f"{folder}/versions", {version, previous})
    return committed


def read_index(lake: LakeResource, folder: str, info: dict | None = None) -> tuple[faiss.Index, pa.Table]:
    """The committed index with its tuned search parameters applied, and its row keys (`info`:
    its index_info.json, when the caller has read it already)."""
    info = info if info is not None else lake.read_json(f"{folder}/index_info.json")
    if "version" not in info:
        raise ValueError(f"{lake.path(folder)} was written by an older clipsieve: materialize its index again")
    files = f"{folder}/versions/{info['version']}"
    if lake.is_local():  # faiss reads the file itself: no copy of it in memory first
        index = faiss.read_index(lake.path(f"{files}/image.index"))
    else:
        index = faiss.deserialize_index(np.frombuffer(lake.read_bytes(f"{files}/image.index"), dtype=np.uint8))
    if info.get("search_params"):
        faiss.ParameterSpace().set_index_parameters(index, info["search_params"])
    return index, lake.read_parquet(f"{files}/keys.parquet")
