"""An IVF index in per-shard parts merged on disk: built, grown by a shard without retraining,
retrained when its quantizer no longer fits (and saying why), read back memory-mapped from a
local and from a remote lake."""

import os

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from faiss.contrib.ondisk import merge_ondisk

from assets.demo.synthetic_pool import PoolSpec, shard_name, write_synthetic_shard
from assets.index_parts import plan_segments
from assets.index_subset import index_subset
from assets.index_vectors import MemberVectors
from assets.indices import exact_top
from resources.indexing import IndexSettings, SegmentedSearch, read_index, set_search_parameters
from resources.lake import LakeResource, index_dir, members_path

MODEL = "synthetic-32"
SPEC = PoolSpec(per_shard=6_000, dim=32, topics=40, seed=11)
SETTINGS = IndexSettings(memory_budget_bytes=2 * 2**20, target_recall=0.9, queries=200)  # an IVF with SQ8 codes
FOLDER = index_dir("all", MODEL)


def _subset(lake: LakeResource, shards: list[str], drop_first: int = 0, drop_last: int = 0) -> pa.Table:
    """Every embedded sample of `shards` as the members of a subset "all" (less some of the
    first shard's or of the last shard's)."""
    keys = pa.concat_tables([lake.read_parquet(f"shards/{s}/embeddings/{MODEL}/keys.parquet", ["key", "shard"])
                             for s in shards])
    keys = keys.slice(drop_first, keys.num_rows - drop_first - drop_last)
    lake.write_parquet(members_path("all"), keys)
    return keys


def _brute_force_recall(lake: LakeResource, members: pa.Table, info: dict) -> float:
    """recall@10 of the committed index on its saved queries, by numpy over every member."""
    index, keys = read_index(lake, FOLDER)
    assert keys.column("key").to_pylist() == members.column("key").to_pylist()
    source = MemberVectors(lake, MODEL, members)
    vectors = np.concatenate([v for _, v in source.chunks()])
    saved = np.load(lake.path(f"{FOLDER}/versions/{info['version']}/recall_truth.npz"))
    queries = saved["queries"]
    exact = queries @ vectors.T
    kth = -np.sort(-exact, axis=1)[:, 9]
    _, found = index.search(queries, 10)
    hits = [(exact[q, rows[rows >= 0]] >= kth[q] - 1e-4).sum() for q, rows in enumerate(found)]
    return float(np.sum(np.minimum(hits, 10)) / (len(queries) * 10))


@pytest.fixture
def pool(tmp_path) -> LakeResource:
    lake = LakeResource(root=str(tmp_path / "lake"))
    for number in range(4):
        write_synthetic_shard(lake, SPEC, number, MODEL)
    return lake


def test_an_ivf_index_is_built_in_parts_and_searched_from_disk(pool):
    members = _subset(pool, [shard_name(n) for n in range(4)])
    info = index_subset(pool, "all", MODEL, SETTINGS)
    assert info["factory"] == "IVF512,SQ8" and info["layout"] == "on_disk" and len(info["parts"]) == 4
    assert info["count"] == 24_000 and info["build_mode"] == "rebuilt" and info["rebuild_reason"] == "no previous index"
    assert info["recall_at_10"] >= 0.9
    assert info["recall_at_10"] == pytest.approx(_brute_force_recall(pool, members, info), abs=1e-9)
    index, keys = read_index(pool, FOLDER)
    lists = faiss.extract_index_ivf(index).invlists
    assert isinstance(faiss.downcast_InvertedLists(lists), faiss.OnDiskInvertedLists)  # mapped, not loaded
    # Each member finds itself: row i of the merged index is member i.
    vectors = np.concatenate([v for _, v in MemberVectors(pool, MODEL, members).chunks()])
    _, found = index.search(vectors[::997], 1)
    assert np.mean(found[:, 0] == np.arange(0, len(vectors), 997)) > 0.95


def test_a_new_shard_adds_its_part_and_keeps_the_quantizer(pool):
    shards = [shard_name(n) for n in range(4)]
    _subset(pool, shards)
    first = index_subset(pool, "all", MODEL, SETTINGS)
    parts = {p: os.path.getmtime(pool.path(p)) for p in pool.glob(f"{FOLDER}/trained/*/parts/*/*.index")}
    write_synthetic_shard(pool, SPEC, 4, MODEL)
    members = _subset(pool, shards + [shard_name(4)])
    grown = index_subset(pool, "all", MODEL, SETTINGS)
    assert grown["build_mode"] == "grown" and "rebuild_reason" not in grown
    assert grown["trained"]["version"] == first["trained"]["version"] and grown["encoded"] == SPEC.per_shard
    assert grown["count"] == 30_000 and grown["recall_truth"] == "extended"
    assert all(os.path.getmtime(pool.path(p)) == mtime for p, mtime in parts.items())  # old parts untouched
    assert grown["recall_at_10"] == pytest.approx(_brute_force_recall(pool, members, grown), abs=1e-9)
    # The extended truth is the truth: exact search over all members for the same queries.
    saved = np.load(pool.path(f"{FOLDER}/versions/{grown['version']}/recall_truth.npz"))
    scores, _ = exact_top(MemberVectors(pool, MODEL, members), saved["queries"], 20)
    assert np.allclose(saved["scores"], scores, atol=1e-6)


def test_parts_pack_into_bounded_segments_and_a_new_shard_merges_only_the_last(pool):
    # SQ8 over 32 dims: 40 bytes a member (codes and id); segments of at most 12,500 members.
    settings = IndexSettings(SETTINGS.memory_budget_bytes, SETTINGS.target_recall, SETTINGS.queries,
                             segment_bytes=500_000)
    shards = [shard_name(n) for n in range(4)]
    _subset(pool, shards)
    first = index_subset(pool, "all", MODEL, settings)
    assert [s["parts"] for s in first["segments"]] == [[0, 2], [2, 4]] and first["recall_members"] == 24_000
    small = PoolSpec(per_shard=2_000, dim=32, topics=40, seed=11)  # the same topics: no drift
    write_synthetic_shard(pool, small, 4, MODEL)
    _subset(pool, shards + [shard_name(4)])
    grown = index_subset(pool, "all", MODEL, settings)  # 2,000 more: past the last segment's room
    assert [s["parts"] for s in grown["segments"]] == [[0, 2], [2, 4], [4, 5]]
    assert grown["segments"][:2] == first["segments"]  # full segments are not merged again
    assert grown["recall_members"] == 26_000  # grown by over RECHECK_GROWTH: measured again
    write_synthetic_shard(pool, PoolSpec(per_shard=400, dim=32, topics=40, seed=11), 5, MODEL)
    members = _subset(pool, shards + [shard_name(4), shard_name(5)])
    tail = index_subset(pool, "all", MODEL, settings)
    assert [s["parts"] for s in tail["segments"]] == [[0, 2], [2, 4], [4, 6]] and tail["count"] == 26_400
    assert tail["segments"][:2] == first["segments"]
    assert tail["recall_members"] == 26_000 and tail["recall_at_10"] == grown["recall_at_10"]
    assert tail["search_params"] == grown["search_params"]
    # The stacked segments answer as the parts merged into one index do.
    stacked, _ = read_index(pool, FOLDER)
    trained = faiss.read_index(pool.path(f"{FOLDER}/trained/{tail['trained']['version']}/trained.index"))
    merge_ondisk(trained, [pool.path(p) for p in tail["parts"]], str(pool.path("merged.ivfdata")))
    faiss.ParameterSpace().set_index_parameters(trained, tail["search_params"])
    queries = np.concatenate([v for _, v in MemberVectors(pool, MODEL, members).chunks()])[::50]
    assert stacked.ntotal == trained.ntotal == 26_400
    np.testing.assert_array_equal(stacked.search(queries, 10)[1], trained.search(queries, 10)[1])
    # So does a search of one segment at a time, top k merged (recall is measured that way).
    segmented = SegmentedSearch([pool.path(f"{FOLDER}/{s['folder']}") for s in tail["segments"]])
    set_search_parameters(segmented, tail["search_params"])
    (scores, found), (stacked_scores, stacked_found) = segmented.search(queries, 10), stacked.search(queries, 10)
    np.testing.assert_allclose(scores, stacked_scores, rtol=1e-6)
    assert (np.sort(found, axis=1) == np.sort(stacked_found, axis=1)).mean() > 0.99  # equal scores at the k-th may swap
    # The last segment takes shards while they fit; the previous index's segments stay (a
    # reader may have it open), older ones go.
    write_synthetic_shard(pool, SPEC, 6, MODEL)
    _subset(pool, shards + [shard_name(n) for n in (4, 5, 6)])
    merged = index_subset(pool, "all", MODEL, settings)
    assert [s["parts"] for s in merged["segments"]] == [[0, 2], [2, 4], [4, 7]]
    assert merged["segments"][:2] == first["segments"] and merged["recall_members"] == 32_400
    on_disk = {f"{FOLDER}/{s['folder']}" for s in merged["segments"] + tail["segments"]}
    assert set(pool.glob(f"{FOLDER}/trained/*/segments/*")) == on_disk
    assert not any(s in on_disk for s in (f"{FOLDER}/{g['folder']}" for g in grown["segments"][2:]))


def test_plan_segments_packs_in_order_and_keeps_the_ranges_of_a_prefix():
    assert plan_segments([], 10, 100) == []
    assert plan_segments([5, 5, 5], 10, 100) == [(0, 2), (2, 3)]
    assert plan_segments([20, 3], 10, 100) == [(0, 1), (1, 2)]  # a part past the bound is a segment alone
    counts = [3, 4, 2, 6, 1, 5, 5, 2]
    full = plan_segments(counts, 10, 80)
    assert full == [(0, 2), (2, 4), (4, 6), (6, 8)]
    for stop in range(1, len(counts)):  # parts appended later change only the last range
        assert set(plan_segments(counts[:stop], 10, 80)[:-1]) <= set(full)


def test_members_leaving_re_encode_their_part_and_the_parts_after_it(pool):
    shards = [shard_name(n) for n in range(4)]
    _subset(pool, shards)
    first = index_subset(pool, "all", MODEL, SETTINGS)
    members = _subset(pool, shards, drop_last=100)  # the last shard loses 100 members
    again = index_subset(pool, "all", MODEL, SETTINGS)
    assert again["trained"]["version"] == first["trained"]["version"], again.get("rebuild_reason")
    assert again["encoded"] == SPEC.per_shard - 100 and again["count"] == 23_900
    assert again["parts"][:3] == first["parts"][:3] and again["parts"][3] != first["parts"][3]
    assert again["recall_truth"] == "searched"  # the old members are not a prefix of the new
    assert again["recall_at_10"] == pytest.approx(_brute_force_recall(pool, members, again), abs=1e-9)
    # The first shard loses 100: every later member moves up, so every part is encoded again.
    members = _subset(pool, shards, drop_first=100)
    moved = index_subset(pool, "all", MODEL, SETTINGS)
    assert moved["trained"]["version"] == first["trained"]["version"] and moved["encoded"] == 23_900
    assert moved["recall_at_10"] == pytest.approx(_brute_force_recall(pool, members, moved), abs=1e-9)
    # The committed index's part and the previous index's (a reader may still have it open).
    assert len(pool.glob(f"{FOLDER}/trained/*/parts/{shards[0]}/*.index")) == 2


def test_drift_and_a_fall_in_recall_retrain_and_say_why(pool):
    shards = [shard_name(n) for n in range(4)]
    _subset(pool, shards)
    first = index_subset(pool, "all", MODEL, SETTINGS)
    # A shard about other topics: far from every trained centroid.
    write_synthetic_shard(pool, PoolSpec(per_shard=6_000, dim=32, topics=40, seed=99), 4, MODEL)
    _subset(pool, shards + [shard_name(4)])
    drifted = index_subset(pool, "all", MODEL, SETTINGS)
    assert drifted["build_mode"] == "rebuilt" and drifted["rebuild_reason"].startswith("drift")
    assert drifted["trained"]["version"] != first["trained"]["version"]
    assert drifted["trained"]["reason"] == drifted["rebuild_reason"]
    # Recall below a target the trained index once reached: retrained (a target it never
    # reached does not retrain it on every refresh).
    assert index_subset(pool, "all", MODEL, SETTINGS)["build_mode"] == "unchanged"  # nothing to do
    never = index_subset(pool, "all", MODEL, IndexSettings(2 * 2**20, 0.9999, 200))
    assert never["build_mode"] == "grown" and never["recall_at_10"] < 0.9999
    info = pool.read_json(f"{FOLDER}/index_info.json")
    info["trained"]["recall_at_10"] = 1.0  # as if it had reached 1.0 when trained
    pool.write_json(f"{FOLDER}/index_info.json", info)
    # Same topics, and enough members (over RECHECK_GROWTH) that recall is measured again.
    write_synthetic_shard(pool, PoolSpec(per_shard=2_000, dim=32, topics=40, seed=11), 5, MODEL)
    _subset(pool, shards + [shard_name(4), shard_name(5)])
    fell = index_subset(pool, "all", MODEL, IndexSettings(2 * 2**20, 0.9999, 200))
    assert fell["build_mode"] == "rebuilt" and fell["rebuild_reason"].startswith("recall@10 fell")


def test_a_remote_lake_index_is_downloaded_once_and_searched(tmp_path):
    lake = LakeResource(root="memory://clipsieve-index-parts")
    try:
        for number in range(4):
            write_synthetic_shard(lake, SPEC, number, MODEL)
        members = _subset(lake, [shard_name(n) for n in range(4)])
        info = index_subset(lake, "all", MODEL, SETTINGS)
        assert info["layout"] == "on_disk" and info["recall_at_10"] >= 0.9
        index, keys = read_index(lake, FOLDER)
        assert keys.num_rows == members.num_rows == index.ntotal
        vectors = np.concatenate([v for _, v in MemberVectors(lake, MODEL, members).chunks()])
        _, found = index.search(vectors[:50], 1)
        assert np.mean(found[:, 0] == np.arange(50)) > 0.9
    finally:
        lake.remove("", recursive=True)


def test_members_out_of_shard_order_are_read_a_shard_at_a_time_in_their_order_within_it(pool):
    members = _subset(pool, [shard_name(n) for n in range(3)])
    shuffled = members.take(pa.array(np.random.default_rng(0).permutation(members.num_rows)))
    ordered, mixed = MemberVectors(pool, MODEL, members), MemberVectors(pool, MODEL, shuffled)
    assert [p.shard for p in mixed.parts] == [p.shard for p in ordered.parts] == [shard_name(n) for n in range(3)]
    for part in mixed.parts:  # the members of each shard in the order the subset lists them
        mine = shuffled.filter(pc.equal(shuffled.column("shard"), part.shard)).column("key")
        assert part.keys.to_pylist() == mine.to_pylist()
    assert ordered.parts[0].keys.to_pylist() == members.column("key").to_pylist()[:SPEC.per_shard]
