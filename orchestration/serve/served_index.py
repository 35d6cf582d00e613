"""A subset's index as the search service holds it: the faiss index and a table aligned with
its rows (key, url, caption, scores, duplicate group, policy memberships, violence score).

The table is built once per index version from the lake's views (sql/serve/index_rows.sql)
and kept as an Arrow IPC file in a local cache folder, memory-mapped: the service never
writes to the lake, a restart does not query the lake again, and a query touches only the
pages of the rows it returns (clip-retrieval's back keeps its metadata the same way). The
same pass over the members' image embeddings gives two things clip-retrieval's back loads
from files of its own:

- `pviolence`: CLIP zero-shot probability of violent against peaceful prompts
  (resources/terms/zero_shot_violence.toml; the back's violence detector compares the same
  two kinds of prompt);
- aesthetic embeddings: the mean image embedding of the members rated 0, 1, ... 9 by the
  `aesthetic` score; a query moved towards one of them favours pictures rated like it (the
  back's `aesthetic_score` / `aesthetic_weight`).
"""

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from resources.catalog import Catalog, read_sql
from resources.curation_files import TERMS_DIR
from resources.embedding_files import load_image_embeddings, normalized
from resources.indexing import read_index
from resources.lake import LakeResource, committed_subset, index_dir
from resources.zero_shot import ZeroShotHead

TABLE_VERSION = "2"  # bump when the table's columns or their meaning change
VIOLENCE_PROMPTS = TERMS_DIR / "zero_shot_violence.toml"
AESTHETIC_LEVELS = 10  # ratings 0..9, as clip-retrieval's aesthetic embeddings


@dataclass
class ServedIndex:
    """One subset's index and its row-aligned table."""
    name: str
    index: faiss.Index
    table: pa.Table  # row i describes index row i (sql/serve/index_rows.sql, + in_<policy>, dedup_group_id,
                     # pviolence)
    aesthetic: np.ndarray  # (AESTHETIC_LEVELS, dim) float32 mean member embeddings; a row of zeros: no member
    info: dict  # the index's index_info.json

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    @property
    def policies(self) -> list[str]:
        """The materialized policies whose membership the table records."""
        return [name.removeprefix("in_") for name in self.table.column_names if name.startswith("in_")]

    def values(self, name: str, rows: np.ndarray) -> np.ndarray:
        """A column's values at index `rows`, as numpy: numbers as float64 (NaN where missing),
        flags as bool (False where missing), text as objects. Only those rows are read from the
        mapped table."""
        column = self.table.column(name).take(pa.array(rows, pa.int64()))
        if pa.types.is_floating(column.type) or pa.types.is_integer(column.type):
            return pc.fill_null(pc.cast(column, pa.float64()), np.nan).to_numpy()
        if pa.types.is_boolean(column.type):
            return pc.fill_null(column, False).to_numpy(zero_copy_only=False)
        return column.to_numpy(zero_copy_only=False)

    def column(self, name: str) -> np.ndarray:
        """A whole column, as `values` gives it."""
        return self.values(name, np.arange(self.count))

    def rows(self, positions: list[int], columns: list[str] | None = None) -> list[dict]:
        """The table's rows at `positions` (index rows), as dicts."""
        table = self.table.select(columns) if columns else self.table
        return table.take(pa.array(positions, pa.int64())).to_pylist()


def open_served_index(lake: LakeResource, catalog: Catalog, policy: str, model_id: str, cache_dir: Path,
                      violence: ZeroShotHead) -> ServedIndex:
    """The committed index of `policy` with its table: read from the cache, or built and cached.
    `violence`: the model's zero-shot head of VIOLENCE_PROMPTS."""
    folder = index_dir(policy, model_id)
    if not lake.exists(f"{folder}/index_info.json"):
        raise ValueError(f"no index for subset {policy!r} and model {model_id}: materialize {policy}_index first")
    info = lake.read_json(f"{folder}/index_info.json")
    committed = (committed_subset(lake, policy) or {}).get("version")
    if info.get("subset_version") != committed:
        raise ValueError(f"the index of {policy!r} covers another version of the subset than the committed one: "
                         f"materialize {policy}_index")
    index, keys = read_index(lake, folder, info)
    digest = hashlib.sha256(json.dumps([lake.url, policy, model_id, info["version"], TABLE_VERSION,
                                        violence.class_embeddings.round(5).tolist(), violence.scale]).encode()) \
        .hexdigest()[:20]
    table_path, aesthetic_path = cache_dir / f"{policy}-{digest}.arrow", cache_dir / f"{policy}-{digest}.npy"
    if not (table_path.exists() and aesthetic_path.exists()):
        table, aesthetic = build_table(lake, catalog, keys, model_id, violence)
        cache_dir.mkdir(parents=True, exist_ok=True)
        _write_atomically(aesthetic_path, lambda f: np.save(f, aesthetic))
        _write_atomically(table_path, lambda f: _write_ipc(f, table))
    with pa.memory_map(str(table_path)) as source:
        table = pa.ipc.open_file(source).read_all()  # zero-copy: the columns are views of the mapping
    return ServedIndex(policy, index, table, np.load(aesthetic_path), info)


def build_table(lake: LakeResource, catalog: Catalog, keys: pa.Table, model_id: str,
                violence: ZeroShotHead) -> tuple[pa.Table, np.ndarray]:
    """(table aligned with the index rows, aesthetic embeddings) from the lake's views and the
    members' image embeddings (read shard by shard, once)."""
    index_keys = keys.select(["key", "shard"]).append_column("row", pa.array(np.arange(keys.num_rows), pa.int64()))
    catalog.connection.register("index_keys", index_keys)
    try:
        table = catalog.query(read_sql("serve/index_rows.sql"))
        memberships = catalog.query(read_sql("serve/memberships.sql")) if "subset_members" not in catalog.missing \
            else pa.table({"policy": pa.array([], pa.string()), "row": pa.array([], pa.int64())})
    finally:
        catalog.connection.unregister("index_keys")
    if table.num_rows != keys.num_rows:
        raise ValueError(f"the index has {keys.num_rows} rows but the catalog describes {table.num_rows}: "
                         "materialize the index again")
    for policy in sorted(set(memberships.column("policy").to_pylist())):
        rows = memberships.filter(pc.equal(memberships.column("policy"), policy)).column("row").to_numpy()
        member = np.zeros(table.num_rows, bool)
        member[rows] = True
        table = table.append_column(f"in_{policy}", pa.array(member))
    # The duplicate group as a number: results are folded by it on every query.
    groups = pc.dictionary_encode(table.column("dedup_group")).combine_chunks().indices
    table = table.append_column("dedup_group_id", pc.cast(groups, pa.int64()))
    pviolence, aesthetic = _embedding_pass(lake, table, model_id, violence)
    return table.append_column("pviolence", pa.array(pviolence, pa.float32())), aesthetic


def _embedding_pass(lake: LakeResource, table: pa.Table, model_id: str,
                    violence: ZeroShotHead) -> tuple[np.ndarray, np.ndarray]:
    """(pviolence per row, aesthetic embeddings) from each shard's image embeddings."""
    pviolence = np.full(table.num_rows, np.nan, np.float32)
    sums = np.zeros((AESTHETIC_LEVELS, violence.input_dim), np.float64)
    counts = np.zeros(AESTHETIC_LEVELS, np.int64)
    shards = table.column("shard").to_numpy(zero_copy_only=False)
    embedding_rows = pc.fill_null(table.column("embedding_row"), -1).to_numpy()
    aesthetic = pc.fill_null(table.column("aesthetic"), np.nan).to_numpy(zero_copy_only=False)
    for shard in np.unique(shards):
        at = np.flatnonzero((shards == shard) & (embedding_rows >= 0))
        if not len(at):
            continue
        _, image = load_image_embeddings(lake, str(shard), model_id)
        vectors = normalized(image[embedding_rows[at]])
        pviolence[at] = violence.predict(vectors)
        rated = ~np.isnan(aesthetic[at])
        level = np.clip(np.rint(aesthetic[at][rated]), 0, AESTHETIC_LEVELS - 1).astype(np.int64)
        np.add.at(sums, level, vectors[rated])
        counts += np.bincount(level, minlength=AESTHETIC_LEVELS)
    means = np.zeros_like(sums, dtype=np.float32)
    rated_levels = counts > 0
    means[rated_levels] = normalized((sums[rated_levels] / counts[rated_levels, None]).astype(np.float32))
    return pviolence, means


def _write_ipc(f, table: pa.Table) -> None:
    with pa.ipc.new_file(f, table.schema) as writer:
        writer.write_table(table)


def _write_atomically(path: Path, write) -> None:
    """Write through a temporary file renamed into place: a concurrent reader sees all or nothing."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as f:
            write(f)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
