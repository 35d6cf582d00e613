"""near_duplicates: duplicate groups over the pool, found a group of clusters at a time.

1. Every covered shard's cluster column (4 bytes a sample) gives the cluster sizes; clusters
   are cut into contiguous ranges whose vectors fit `memory_budget_bytes`.
2. For each range, the rows of those clusters are read: a shard in the cluster-major base
   (assets/dedup/cluster_base.py) from the base, 8-bit, a ranged read per run of wanted
   clusters; any other shard exact, with one ranged read of its own assignment files. A pass
   that reads every cluster reads them all from the shards' files and writes the base again.
   Within each cluster, pairs with cosine >= 1 - eps are candidates (assets/dedup/pairs.py;
   one through an 8-bit row is checked against the exact vectors in the shards' files), and
   a candidate is kept when the two 8x8 thumbnails correlate
   at least `min_thumbnail_correlation` (0 turns the check off): that separates a re-upload of
   one picture from a second picture of the same thing when the embedding does not.
3. Byte-identical images (same sha256) and identical perceptual hashes are folded in
   (sql/dedup/hash_pairs.sql). Groups are the connected components; a group keeps one sample
   (the keep rule: first in (shard, key) order, SemDeDup's hard or easy, or random) and the
   others are its duplicates.

Only shards whose assignment or image_hashes changed since the last run are compared again
(with every shard, in the clusters they have rows in, and only those clusters are read;
hash groups holding one of their samples, or that lost a link to one, are searched again);
the pairs among the others are kept from the state the last run committed, unless the
centroids or the pair settings changed. Each covered shard gets
shards/<shard>/dedup/<model>/duplicates.parquet (key, shard, cluster, is_duplicate,
duplicate_of, duplicate_reason, group_size), rewritten only when its rows change.
"""

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from assets.dedup import cluster_base
from assets.dedup import pairs as arithmetic
from assets.dedup.assignment import read_record
from assets.dedup.centroids import read_centroids
from assets.dedup.cluster_base import BaseUse
from assets.scores.common import scores_digest
from resources.catalog import Catalog
from resources.dedup import DedupSettings
from resources.embedding_files import as_float32
from resources.lake import LakeResource, assignment_dir, dedup_dir, prune_versions

CODE_VERSION = "3"
PAIR_SETTINGS = ("eps", "min_thumbnail_correlation", "boundary_clusters")
STATE_PAIRS = "semantic+hash"  # what the committed state's pairs.parquet holds
PAIR_SCHEMA = pa.schema([("a_shard", pa.string()), ("a_key", pa.string()), ("b_shard", pa.string()),
                         ("b_key", pa.string()), ("reason", pa.string())])
SHARD_BITS = 32  # a sample's id in a run: shard index << 32 | its row in the shard's embeddings


@dataclass
class ShardPart:
    """One covered shard as the pairwise step reads it."""
    shard: str
    version: str  # its assignment version
    clusters: np.ndarray  # cluster of each row of its vectors.npy (sorted)
    dirty: bool

    def files(self, model_id: str) -> str:
        return f"{assignment_dir(self.shard, model_id)}/versions/{self.version}"


def covered_shards(lake: LakeResource, model_id: str, shards: list[str],
                   centroids_version: str) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """((shard, assignment version) of the shards assigned against these centroids, the
    others -> why they are left out)."""
    covered, left_out = [], {}
    for shard in shards:
        record = read_record(lake, shard, model_id)
        if record is None:
            left_out[shard] = "no dedup_assignment yet"
        elif record["centroids"] != centroids_version:
            left_out[shard] = "assigned against other centroids: its dedup_assignment is stale"
        else:
            covered.append((shard, record["version"]))
    return covered, left_out


def cluster_ranges(counts: np.ndarray, row_bytes: int, budget_bytes: int) -> list[tuple[int, int]]:
    """Contiguous [lo, hi) cluster ranges whose rows fit the budget (a larger cluster alone)."""
    ranges, lo, used = [], 0, 0
    for cluster, count in enumerate(counts):
        size = int(count) * row_bytes
        if used and used + size > budget_bytes:
            ranges.append((lo, cluster))
            lo, used = cluster, 0
        used += size
    if len(counts):
        ranges.append((lo, len(counts)))
    return ranges


def read_range(lake: LakeResource, model_id: str, parts: list[ShardPart], base: BaseUse | None, lo: int, hi: int,
               wanted: np.ndarray, buffer: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                                              np.ndarray, np.ndarray]:
    """(vectors, cluster, id, visitor, dirty, error bound) of every shard's rows in the
    `wanted` clusters (a bool per cluster) of [lo, hi): the based shards' from the
    cluster-major base, 8-bit, a ranged read per run of wanted clusters (their error bound is
    positive); each other shard's exact, with one ranged read of its own files (bound 0). The
    vectors are written as float32 straight into `buffer` (reused range after range: the
    vectors returned are a view of it)."""
    capacity = len(buffer)  # sized for the range's rows (left-out base rows included)
    clusters, ids = np.empty(capacity, np.int32), np.empty(capacity, np.int64)
    visitor, dirty = np.empty(capacity, bool), np.empty(capacity, bool)
    error = np.empty(capacity, np.float32)
    at = 0

    def put(count: int, cluster: np.ndarray, part: np.ndarray | int, row: np.ndarray, visits: np.ndarray,
            changed: bool) -> slice:
        nonlocal at
        rows = slice(at, at + count)
        clusters[rows] = cluster
        ids[rows] = (np.asarray(part, np.int64) << SHARD_BITS) | row
        visitor[rows] = visits != 0
        dirty[rows] = changed
        at += count
        return rows

    for codes, scales, rows in cluster_base.read_clusters(lake, model_id, base, wanted, lo, hi) if base else ():
        into = put(len(codes), rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3], False)  # based: clean
        cluster_base.dequantize(codes, scales, buffer[into])
        error[into] = scales[:, 1]
    for index, part in enumerate(parts):
        if base is not None and base.based[index]:
            continue
        start, stop = (int(i) for i in np.searchsorted(part.clusters, [lo, hi]))
        keep = wanted[part.clusters[start:stop]]
        if keep.any():
            rows = lake.read_npy_rows(f"{part.files(model_id)}/rows.npy", start, stop)[keep]
            into = put(len(rows), rows[:, 0], index, rows[:, 1], rows[:, 2], part.dirty)
            as_float32(lake.read_npy_rows(f"{part.files(model_id)}/vectors.npy", start, stop)[keep],
                       out=buffer[into])
            error[into] = 0
    return buffer[:at], clusters[:at], ids[:at], visitor[:at], dirty[:at], error[:at]


def exact_vectors(lake: LakeResource, model_id: str, parts: list[ShardPart], ids: np.ndarray) -> np.ndarray:
    """float32 vectors of the sample ids, from each shard's own assignment files (a sample's
    own row, not a visit: the vector is the same)."""
    out = np.empty((len(ids), embedding_width(lake, model_id, parts)), np.float32)
    shard_of, row_of = ids >> SHARD_BITS, ids & ((1 << SHARD_BITS) - 1)
    for index in np.unique(shard_of):
        at = np.flatnonzero(shard_of == index)
        files = parts[int(index)].files(model_id)
        rows = lake.read_npy(f"{files}/rows.npy")
        own = np.flatnonzero(rows[:, 2] == 0)
        position = np.full(int(rows[:, 1].max()) + 1, -1, np.int64)
        position[rows[own, 1]] = own
        wanted = position[row_of[at]]
        order = np.argsort(wanted, kind="stable")
        read = lake.read_npy_runs(f"{files}/vectors.npy", [(p, p + 1) for p in wanted[order].tolist()])
        out[at[order]] = as_float32(read)
    return out


def confirmed(lake: LakeResource, model_id: str, parts: list[ShardPart], a: np.ndarray, b: np.ndarray,
              threshold: float) -> np.ndarray:
    """Whether each candidate (a, b) found through an 8-bit base row is a pair: its float32
    product from the exact vectors at or above `threshold`."""
    if not len(a):
        return np.zeros(0, bool)
    ends, where = np.unique(np.concatenate([a, b]), return_inverse=True)
    vectors = exact_vectors(lake, model_id, parts, ends)
    return np.einsum("nd,nd->n", vectors[where[:len(a)]], vectors[where[len(a):]]) >= threshold


def keys_of(lake: LakeResource, model_id: str, parts: list[ShardPart], ids: np.ndarray) -> pa.Table:
    """(shard, key) of each sample id, in the order given."""
    shard_of, row_of = ids >> SHARD_BITS, ids & ((1 << SHARD_BITS) - 1)
    shards = np.empty(len(ids), dtype=object)
    keys = np.empty(len(ids), dtype=object)
    for index in np.unique(shard_of):
        part = parts[int(index)]
        wanted = np.flatnonzero(shard_of == index)
        column = lake.read_parquet(f"{assignment_dir(part.shard, model_id)}/assignment.parquet", ["key"]).column(0)
        keys[wanted] = column.take(pa.array(row_of[wanted])).to_pylist()
        shards[wanted] = part.shard
    return pa.table({"shard": pa.array(list(shards), pa.string()), "key": pa.array(list(keys), pa.string())})


def thumbnails(lake: LakeResource, wanted: pa.Table) -> np.ndarray:
    """Normalized thumbnails of the (shard, key) rows of `wanted`, in its order."""
    out = np.zeros((wanted.num_rows, 64), np.float32)
    shards = wanted.column("shard").to_numpy(zero_copy_only=False)
    for shard in np.unique(shards):
        rows = np.flatnonzero(shards == shard)
        hashes = lake.read_parquet(f"shards/{shard}/scores/image_hashes.parquet", ["key", "thumbnail"])
        at = pc.index_in(wanted.column("key").take(pa.array(rows)), value_set=hashes.column("key"))
        found = hashes.column("thumbnail").take(at).to_pylist()
        out[rows] = arithmetic.normalized_thumbnails(found)
    return out


def semantic_pairs(lake: LakeResource, model_id: str, parts: list[ShardPart], centroids: int,
                   settings: DedupSettings, base_record: dict | None,
                   log: Callable[[str], None]) -> tuple[pa.Table, dict, dict]:
    """Thumbnail-confirmed pairs (a_shard, a_key, b_shard, b_key, reason 'semantic') with a dirty
    side, a range of clusters at a time; the step's figures; and the record of the
    cluster-major base the next run reads (assets/dedup/cluster_base.py): `base_record` kept,
    or a new one, written when this pass reads every cluster."""
    base = cluster_base.use_base(lake, model_id, base_record, [(p.shard, p.version, p.dirty) for p in parts])
    outside = sum(len(p.clusters) for i, p in enumerate(parts) if base is None or not base.based[i])
    rebase = base is None or outside > settings.rebase_share * sum(len(p.clusters) for p in parts)
    if rebase:  # every cluster is read (and written to the new base); pairs still need a dirty side
        base = None  # read from the shards' own files: the new base is quantized from exact rows
        wanted = np.ones(centroids, bool)
        writer = cluster_base.BaseWriter(lake, model_id, [(p.shard, p.version) for p in parts], centroids,
                                         (base_record or {}).get("version"))
    else:
        # Only a cluster holding a dirty shard's rows can give a pair with a dirty side: after one
        # new shard, the others' rows of the clusters it does not meet are neither read nor compared.
        wanted = np.zeros(centroids, bool)
        for part in parts:
            if part.dirty:
                wanted[part.clusters] = True
    # What a range reads: the base's rows (a left-out shard's too) and the other shards' own.
    reads = np.zeros(centroids, np.int64) if base is None else base.counts.copy()
    for index, part in enumerate(parts):
        if base is None or not base.based[index]:
            reads += np.bincount(part.clusters, minlength=centroids)
    # A row read costs its float32 vector, its ids and its error bound (similarity blocks are bounded apart).
    width = embedding_width(lake, model_id, parts)
    row_bytes = 4 * (width + 5)
    wanted_reads = np.where(wanted, reads, 0)
    ranges = cluster_ranges(wanted_reads, row_bytes, settings.memory_budget_bytes)
    # One buffer for every range's vectors: a fresh one per range would page-fault its way in.
    buffer = np.empty((max(int(wanted_reads[lo:hi].sum()) for lo, hi in ranges), width), np.float32)
    found_a, found_b, found_exact = [], [], []
    for number, (lo, hi) in enumerate(ranges, 1):
        vectors, clusters, ids, visitor, dirty, error = read_range(lake, model_id, parts, base, lo, hi, wanted,
                                                                   buffer)
        if rebase:
            writer.add_range(lo, hi, vectors, clusters, ids >> SHARD_BITS, ids & ((1 << SHARD_BITS) - 1), visitor)
        a, b, exact = arithmetic.cluster_pairs(vectors, clusters, ids, visitor, dirty, settings.eps, error=error)
        found_a.append(a)
        found_b.append(b)
        found_exact.append(exact)
        if number % 10 == 0 or number == len(ranges):
            log(f"near_duplicates: clusters {hi}/{centroids} compared ({number}/{len(ranges)} ranges)")
    a, b, exact = np.concatenate(found_a), np.concatenate(found_b), np.concatenate(found_exact)
    # Candidates through an 8-bit base row are checked against the exact vectors.
    unsure = np.flatnonzero(~exact)
    checked = np.ones(len(a), bool)
    checked[unsure] = confirmed(lake, model_id, parts, a[unsure], b[unsure], 1 - settings.eps)
    a, b = arithmetic.unique_pairs(a[checked], b[checked])
    # Both ends at once: each shard's keys and thumbnails are read once.
    ends = keys_of(lake, model_id, parts, np.concatenate([a, b]))
    pictures = thumbnails(lake, ends)
    alike = arithmetic.thumbnails_alike(pictures[:len(a)], pictures[len(a):], settings.min_thumbnail_correlation)
    first, second = ends.slice(0, len(a)), ends.slice(len(a))
    table = pa.table({"a_shard": first.column("shard"), "a_key": first.column("key"),
                      "b_shard": second.column("shard"), "b_key": second.column("key"),
                      "reason": pa.array(["semantic"] * len(a), pa.string())}).filter(pa.array(alike))
    figures = {"cluster_ranges": len(ranges), "candidates": int(len(a)), "rebased": rebase,
               "rows_read": int(wanted_reads.sum()), "checked_against_exact": int(len(unsure))}
    return table, figures, writer.finish() if rebase else base_record


def embedding_width(lake: LakeResource, model_id: str, parts: list[ShardPart]) -> int:
    """Embedding width, from the first shard's vectors.npy header."""
    for part in parts:
        if len(part.clusters):
            return lake.read_npy_rows(f"{part.files(model_id)}/vectors.npy", 0, 1).shape[1]
    return 1


def keep_rank(rule: str, nodes: pa.Table, similarity: np.ndarray, seed: int) -> np.ndarray:
    """A distinct rank per node; its group keeps the lowest. `nodes` is in (shard, key) order."""
    n = nodes.num_rows
    if rule == "first":
        return np.arange(n)
    if rule in ("hard", "easy"):  # SemDeDup: hard keeps the sample farthest from its centroid
        sims = np.nan_to_num(similarity, nan=1.0)
        return np.argsort(np.argsort(sims if rule == "hard" else -sims, kind="stable"), kind="stable")
    names = [f"{seed}/{s}/{k}" for s, k in zip(nodes.column("shard").to_pylist(), nodes.column("key").to_pylist())]
    digests = [hashlib.sha256(name.encode()).hexdigest() for name in names]
    return np.argsort(np.argsort(digests, kind="stable"), kind="stable")


def duplicate_groups(db: Catalog, pairs: pa.Table, settings: DedupSettings) -> pa.Table:
    """One row per sample in a group of two or more: shard, key, is_duplicate, duplicate_of,
    duplicate_reason (exact | phash | semantic, against the kept sample), group_size."""
    ends = pa.concat_tables([
        pairs.select(["a_shard", "a_key"]).rename_columns(["shard", "key"]),
        pairs.select(["b_shard", "b_key"]).rename_columns(["shard", "key"])])
    nodes = ends.group_by(["shard", "key"]).aggregate([]).sort_by([("shard", "ascending"), ("key", "ascending")])
    nodes = nodes.append_column("node", pa.array(np.arange(nodes.num_rows), pa.int64()))
    db.connection.register("dedup_nodes", nodes)
    attributes = db.query(db.lake_sql("dedup/node_attributes.sql"))
    db.connection.unregister("dedup_nodes")

    def node_of(shard: str, key: str) -> np.ndarray:
        joined = pairs.select([shard, key]).rename_columns(["shard", "key"]).append_column(
            "order", pa.array(np.arange(pairs.num_rows))).join(nodes, ["shard", "key"]).sort_by("order")
        return joined.column("node").to_numpy()

    similarity = attributes.column("centroid_similarity").to_numpy(zero_copy_only=False).astype(np.float64)
    keeper = arithmetic.group_keepers(keep_rank(settings.keep, nodes, similarity, settings.seed),
                                      node_of("a_shard", "a_key"), node_of("b_shard", "b_key"))
    sizes = np.bincount(keeper, minlength=nodes.num_rows)[keeper]
    keeper_index = pa.array(keeper)

    def same_as_keeper(name: str) -> np.ndarray:
        column = attributes.column(name)
        return np.asarray(pc.fill_null(pc.equal(column, column.take(keeper_index)), False))

    is_duplicate = keeper != np.arange(nodes.num_rows)
    reasons = np.where(~is_duplicate, None, np.where(same_as_keeper("sha256"), "exact",
                                                     np.where(same_as_keeper("phash"), "phash", "semantic")))
    return pa.table({
        "shard": nodes.column("shard"),
        "key": nodes.column("key"),
        "is_duplicate": pa.array(is_duplicate, pa.bool_()),
        "duplicate_of": pc.if_else(pa.array(is_duplicate), nodes.column("key").take(keeper_index), None),
        "duplicate_reason": pa.array(reasons, pa.string()),
        "group_size": pa.array(sizes, pa.int32()),
    })


def shard_duplicates(lake: LakeResource, model_id: str, shard: str, groups: pa.Table) -> pa.Table:
    """Every sample of the shard with its cluster and, for those in a group, the group's columns."""
    assignment = lake.read_parquet(f"{assignment_dir(shard, model_id)}/assignment.parquet",
                                   ["key", "shard", "cluster"])
    mine = groups.filter(pc.equal(groups.column("shard"), shard)).drop_columns(["shard"])
    joined = assignment.append_column("order", pa.array(np.arange(assignment.num_rows))) \
        .join(mine, "key", join_type="left outer").sort_by("order")
    return pa.table({
        "key": joined.column("key"),
        "shard": joined.column("shard"),
        "cluster": joined.column("cluster"),
        "is_duplicate": pc.fill_null(joined.column("is_duplicate"), False),
        "duplicate_of": joined.column("duplicate_of"),
        "duplicate_reason": joined.column("duplicate_reason"),
        "group_size": pc.fill_null(joined.column("group_size"), 1).cast(pa.int32()),
    })


def read_state(lake: LakeResource, model_id: str) -> tuple[dict, pa.Table, pa.Table] | None:
    """The last run's committed state: its record, pairs (semantic and hash) and groups."""
    path = f"{dedup_dir(model_id)}/state.json"
    if not lake.exists(path):
        return None
    record = lake.read_json(path)
    folder = f"{dedup_dir(model_id)}/state/{record['version']}"
    return record, lake.read_parquet(f"{folder}/pairs.parquet"), lake.read_parquet(f"{folder}/groups.parquet")


def _involving(pairs: pa.Table, shards: set[str]) -> pa.Array:
    values = pa.array(sorted(shards), pa.string())
    return pc.or_(pc.is_in(pairs.column("a_shard"), value_set=values),
                  pc.is_in(pairs.column("b_shard"), value_set=values))


def hash_pairs(db: Catalog, shards: list[str], dirty: set[str], dropped: pa.Table, changed: set[str]) -> pa.Table:
    """The exact and perceptual-hash pairs of every hash group that a dirty shard's sample is in,
    or that lost a link to a changed (dirty or departed) shard's sample (`dropped`: the last
    run's pairs with such a side; their other sides name the groups). In a full run every
    shard is dirty and every group is searched (sql/dedup/hash_pairs.sql)."""
    hashed = dropped.filter(pc.is_in(dropped.column("reason"), value_set=pa.array(["exact", "phash"])))
    ends = pa.concat_tables([hashed.select(["a_shard", "a_key"]).rename_columns(["shard", "key"]),
                             hashed.select(["b_shard", "b_key"]).rename_columns(["shard", "key"])])
    linked = ends.filter(pc.invert(pc.is_in(ends.column("shard"), value_set=pa.array(sorted(changed), pa.string()))))
    tables = {"dedup_shards": pa.table({"shard": pa.array(shards, pa.string())}),
              "dedup_dirty": pa.table({"shard": pa.array(sorted(dirty), pa.string())}),
              "dedup_linked": linked}
    for name, table in tables.items():
        db.connection.register(name, table)
    try:
        return db.query(db.lake_sql("dedup/hash_pairs.sql")).cast(PAIR_SCHEMA)
    finally:
        for name in tables:
            db.connection.unregister(name)


def _distinct(pairs: pa.Table) -> pa.Table:
    """Each pair once (a hash group searched again gives some pairs the last run kept), in a
    fixed order: the same pool gives the same state file whatever order DuckDB returned."""
    return pairs.group_by(PAIR_SCHEMA.names, use_threads=False).aggregate([]).cast(PAIR_SCHEMA) \
        .sort_by([(name, "ascending") for name in PAIR_SCHEMA.names])


def _rows_by_shard(groups: pa.Table) -> dict[str, str]:
    """A digest of each shard's group rows, to tell which shards' files change."""
    groups = groups.sort_by([("shard", "ascending"), ("key", "ascending")])
    text = pc.binary_join_element_wise(*(pc.fill_null(groups.column(name).cast(pa.string()), "-")
                                         for name in groups.column_names), "\x1f")
    shards = groups.column("shard").to_numpy(zero_copy_only=False)
    edges = [0, *(np.flatnonzero(shards[1:] != shards[:-1]) + 1).tolist(), len(shards)]
    return {shards[a]: hashlib.sha256("\n".join(text[a:b].to_pylist()).encode()).hexdigest()
            for a, b in zip(edges, edges[1:]) if b > a}


def find_near_duplicates(lake: LakeResource, db: Catalog, model_id: str, shards: list[str],
                         settings: DedupSettings, log: Callable[[str], None] = print) -> dict:
    """Find the duplicate groups of the pool's `shards`, write each covered shard's
    duplicates.parquet that changes, commit the state; the figures."""
    committed = read_centroids(lake, model_id)
    if committed is None:
        raise ValueError(f"no dedup centroids for model {model_id} yet: materialize dedup_centroids first")
    centroids, centroid_info = committed.vectors, committed.info
    covered, left_out = covered_shards(lake, model_id, shards, centroid_info["version"])
    if not covered:
        raise ValueError(f"no shard assigned against the current dedup centroids; left out: {left_out}")
    state = read_state(lake, model_id)
    same_basis = state is not None and state[0]["centroids"] == centroid_info["version"] \
        and state[0]["settings"] == settings.digest(*PAIR_SETTINGS) and state[0].get("pairs") == STATE_PAIRS
    # A shard is compared again when its assignment or its thumbnails (image_hashes) changed.
    inputs = {shard: f"{version}/{scores_digest(lake, shard, 'image_hashes')}" for shard, version in covered}
    before = state[0]["shards"] if same_basis else {}
    dirty = {shard for shard in inputs if before.get(shard) != inputs[shard]}
    gone = set(before) - {shard for shard, _ in covered}
    parts = [ShardPart(shard, version, lake.read_npy(f"{assignment_dir(shard, model_id)}/versions/{version}/rows.npy")
                       [:, 0].copy(), shard in dirty) for shard, version in covered]
    counts = np.zeros(len(centroids), np.int64)
    for part in parts:
        counts += np.bincount(part.clusters, minlength=len(centroids))
    base_before = state[0].get("base") if same_basis else None
    new_pairs, figures, base = semantic_pairs(lake, model_id, parts, len(centroids), settings, base_before, log) \
        if dirty else (PAIR_SCHEMA.empty_table(), {"cluster_ranges": 0, "candidates": 0, "rebased": False,
                                                    "rows_read": 0}, base_before)
    figures["largest_cluster"] = int(counts.max())
    old_pairs = state[1] if same_basis else PAIR_SCHEMA.empty_table()
    changed = _involving(old_pairs, dirty | gone)
    kept = old_pairs.filter(pc.invert(changed))
    hashed = hash_pairs(db, [s for s, _ in covered], dirty, old_pairs.filter(changed), dirty | gone)
    pairs = _distinct(pa.concat_tables([kept, new_pairs.cast(PAIR_SCHEMA), hashed]))
    groups = duplicate_groups(db, pairs, settings)

    old_rows = _rows_by_shard(state[2]) if state is not None else {}
    new_rows = _rows_by_shard(groups)
    rewrite = [shard for shard, _ in covered
               if shard in dirty or old_rows.get(shard) != new_rows.get(shard)
               or not lake.exists(f"{assignment_dir(shard, model_id)}/duplicates.parquet")]
    for shard in rewrite:
        lake.write_parquet(f"{assignment_dir(shard, model_id)}/duplicates.parquet",
                           shard_duplicates(lake, model_id, shard, groups))
    for shard in left_out:  # out of the groups: out of the duplicates view too, never half in
        lake.remove(f"{assignment_dir(shard, model_id)}/duplicates.parquet")
    version = hashlib.sha256(json.dumps([covered, new_rows, pairs.num_rows], sort_keys=True).encode()) \
        .hexdigest()[:16]
    folder = dedup_dir(model_id)
    lake.write_parquet(f"{folder}/state/{version}/pairs.parquet", pairs)
    lake.write_parquet(f"{folder}/state/{version}/groups.parquet", groups)
    reasons = groups.column("duplicate_reason").to_pylist()
    samples = sum(lake.parquet_rows(f"{assignment_dir(s, model_id)}/assignment.parquet") for s, _ in covered)
    result = {
        "samples": samples,
        "duplicates": sum(1 for r in reasons if r),
        **{f"duplicates/{r}": reasons.count(r) for r in ("exact", "phash", "semantic")},
        "groups": int(groups.num_rows - sum(1 for r in reasons if r)),
        "clusters": int(len(centroids)),
        "shards": len(covered),
        "compared_shards": len(dirty),
        "rewritten_shards": len(rewrite),
        "mode": "incremental" if same_basis else "full",
        "left_out_shards": left_out,
        **figures,
    }
    previous = state[0]["version"] if state is not None else ""
    lake.write_json(f"{folder}/state.json", {
        "version": version, "centroids": centroid_info["version"], "settings": settings.digest(*PAIR_SETTINGS),
        "pairs": STATE_PAIRS, "shards": inputs, "base": base, "figures": result})
    prune_versions(lake, f"{folder}/state", {version, previous})
    # Only this step reads the base, through the state it commits: the one it names is kept.
    prune_versions(lake, f"{folder}/base", {base["version"]} if base else set())
    return result
