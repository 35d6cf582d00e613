"""What the <policy>_index asset runs: the policy's committed members indexed, in memory
(assets/indices.py: Flat, HNSW and small IVF sets grown in place) or, for an IVF, in parts
merged on disk (assets/index_parts.py)."""

from collections.abc import Callable

from assets.index_parts import update_parted_index
from assets.index_vectors import MemberVectors
from assets.indices import choose_factory, held_out_queries, update_index
from resources.indexing import IndexSettings, read_index, write_index
from resources.lake import LakeResource, committed_subset, index_dir, members_path


def index_subset(lake: LakeResource, policy: str, model_id: str, settings: IndexSettings,
                 log: Callable[[str], None] = lambda message: None) -> dict:
    """Grow or rebuild the policy's index over its committed members and commit it; its info."""
    members = lake.read_parquet(members_path(policy), ["key", "shard"])
    subset_version = (committed_subset(lake, policy) or {}).get("version")
    source = MemberVectors(lake, model_id, members)
    folder = index_dir(policy, model_id)
    info_path = f"{folder}/index_info.json"
    old = lake.read_json(info_path) if lake.exists(info_path) else None
    old = old if old and "version" in old else None
    factory = choose_factory(source.count, source.dim, settings.memory_budget_bytes)
    if factory.startswith("IVF"):
        # The subset version is in the info before the commit: a reader never sees an index
        # labelled with another subset version than the one it covers.
        return update_parted_index(lake, folder, source, factory, settings,
                                   old, log=log, extra_info={"subset_version": subset_version})
    previous = (*read_index(lake, folder, old), old) if old else None
    index, keys, info = update_index(previous, source, held_out_queries(source, settings.queries), settings,
                                     source.shard_versions())
    committed = write_index(lake, folder, index, keys, {**info, "subset_version": subset_version})
    lake.remove(f"{folder}/trained", recursive=True)  # an IVF's parts, from when the set was larger
    return committed
