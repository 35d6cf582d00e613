"""Near-duplicates in three steps (centroids, per-shard assignment, pairwise groups) on a
synthetic pool written in the lake's real formats: equal to brute force, incremental, bounded."""

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from assets.dedup import assignment, centroids, cluster_base, near_duplicates
from assets.dedup.nearest import CentroidSearch
from assets.dedup.pairs import brute_force_pairs, cluster_pairs
from assets.demo.synthetic_pool import PoolSpec, shard_name, synthetic_shard, write_synthetic_shard
from assets.scores.common import write_scores
from resources.catalog import open_catalog
from resources.dedup import DedupSettings
from resources.lake import LakeResource, assignment_dir, dedup_dir

MODEL = "synthetic"


def clustered_pairs(vectors: np.ndarray, eps: float, clusters: int, boundary_clusters: int) -> set[tuple[int, int]]:
    """The pairs the assignment and pairwise steps find, on vectors stored as the lake stores them."""
    trained = centroids.train_centroids(vectors, clusters, seed=0)
    result = assignment.assign(vectors, trained, eps, boundary_clusters)
    rows = assignment.cluster_order(result)
    a, b, exact = cluster_pairs(vectors[rows[:, 1]], rows[:, 0], rows[:, 1].astype(np.int64),
                                rows[:, 2].astype(bool), np.ones(len(rows), bool), eps)
    assert exact.all()
    return set(zip(a.tolist(), b.tolist()))


@pytest.mark.parametrize("eps", [0.02, 0.1])
def test_clustered_search_equals_brute_force_on_20000_embeddings(eps):
    data = synthetic_shard(PoolSpec(per_shard=20_000, dim=512, topics=100, seed=3), 0)
    vectors = data.image.astype(np.float16).astype(np.float32)  # as assignment stores them
    truth = brute_force_pairs(vectors, eps)
    assert len(truth) > 500  # the planted duplicates, at least
    assert clustered_pairs(vectors, eps, clusters=100, boundary_clusters=DedupSettings().boundary_clusters) == truth


def test_many_clusters_are_searched_in_two_levels_and_find_the_same_pairs():
    """5,000 clusters (two-level k-means), each vector's nearest found by the two-level search
    over the centroids: nearly always the exact nearest, and the same pairs as brute force."""
    data = synthetic_shard(PoolSpec(per_shard=20_000, dim=512, topics=100, seed=3), 0)
    vectors = data.image.astype(np.float16).astype(np.float32)
    trained = centroids.train_centroids(vectors, 5_000, seed=0)
    search = CentroidSearch(trained)
    assert len(trained) == 5_000 and search.two_level
    similarity, found = search.search(vectors, 2)
    exact = np.argsort(-(vectors @ trained.T), axis=1)[:, :2]
    assert np.mean(found[:, 0] == exact[:, 0]) > 0.98
    assert np.all(similarity[:, 0] >= similarity[:, 1])
    np.testing.assert_allclose(similarity[:, 0], np.einsum("ij,ij->i", vectors, trained[found[:, 0]]), rtol=1e-5)
    assert clustered_pairs(vectors, 0.1, clusters=5_000, boundary_clusters=1) == brute_force_pairs(vectors, 0.1)


def near_threshold_vectors() -> tuple[np.ndarray, set[tuple[int, int]]]:
    """Pairs at 1 - eps (eps 0.1) plus or minus 0.0002 to 0.012, and one pair at cosine 0.9009
    whose every component bfloat16 rounds down by 0.33% (222 entries of +-1/sqrt(222), 11 signs
    apart): its bfloat16 product is 0.8945. (float32 vectors, the pairs at or above 0.9.)"""
    rng = np.random.default_rng(5)
    offsets = np.concatenate([-np.geomspace(2e-4, 0.012, 40), np.geomspace(2e-4, 0.012, 40)])
    base = rng.standard_normal((len(offsets), 512))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    away = rng.standard_normal((len(offsets), 512))
    away -= np.einsum("ij,ij->i", away, base)[:, None] * base
    away /= np.linalg.norm(away, axis=1, keepdims=True)
    cosine = 0.9 + offsets
    partner = cosine[:, None] * base + np.sqrt(1 - cosine ** 2)[:, None] * away
    rounded_down = np.zeros((2, 512))
    rounded_down[:, :222] = rng.choice([-1, 1], 222) / np.sqrt(222)
    rounded_down[1, :11] *= -1
    vectors = np.concatenate([base, partner, rounded_down]).astype(np.float32)
    n = len(vectors)
    return vectors, {(i, i + len(offsets)) for i in np.flatnonzero(offsets > 0).tolist()} | {(n - 2, n - 1)}


@pytest.mark.parametrize("bfloat16", [False, True])
@pytest.mark.parametrize("clusters", ["one", "a cluster a pair"])
def test_pairs_just_above_and_below_the_threshold_are_told_apart_in_either_precision(bfloat16, clusters):
    """bfloat16 products only pick candidates (in one cluster); clusters of two are multiplied
    in float32; either way the pairs are the float32 ones."""
    vectors, expected = near_threshold_vectors()
    n = len(vectors)
    cluster = np.zeros(n, np.int32) if clusters == "one" else \
        np.concatenate([np.arange(80), np.arange(80), [80, 80]]).astype(np.int32)
    a, b, exact = cluster_pairs(vectors, cluster, np.arange(n, dtype=np.int64), np.zeros(n, bool),
                                np.ones(n, bool), eps=0.1, bfloat16=bfloat16)
    assert exact.all()
    assert set(zip(a.tolist(), b.tolist())) == expected == brute_force_pairs(vectors, 0.1)


@pytest.mark.parametrize("bfloat16", [False, True])
@pytest.mark.parametrize("clusters", ["one", "a cluster a pair"])
def test_8_bit_base_rows_give_candidates_that_the_exact_vectors_settle(bfloat16, clusters):
    """The first of each pair as the cluster-major base stores it (8 bits, clean), the second
    exact and new: every pair is among the candidates flagged for the exact check, and that
    check gives exactly the float32 pairs."""
    vectors, expected = near_threshold_vectors()
    n = len(vectors)
    stored = np.zeros(n, bool)
    stored[:80] = True
    stored[n - 2] = True
    codes, scales = cluster_base.quantize(vectors[stored])
    read, rounded = vectors.copy(), np.empty(codes.shape, np.float32)
    cluster_base.dequantize(codes, scales, rounded)
    read[stored] = rounded
    assert not np.array_equal(read[stored], vectors[stored])
    error = np.zeros(n, np.float32)
    error[stored] = scales[:, 1]
    # The bound holds: the product with any unit vector moves by less than the row's bound.
    probe = np.random.default_rng(1).standard_normal((200, 512)).astype(np.float32)
    probe /= np.linalg.norm(probe, axis=1, keepdims=True)
    assert (np.abs((read[stored] - vectors[stored]) @ probe.T) <= error[stored, None]).all()
    cluster = np.zeros(n, np.int32) if clusters == "one" else \
        np.concatenate([np.arange(80), np.arange(80), [80, 80]]).astype(np.int32)
    a, b, exact = cluster_pairs(read, cluster, np.arange(n, dtype=np.int64), np.zeros(n, bool),
                                ~stored, eps=0.1, bfloat16=bfloat16, error=error)
    assert not exact.any()  # every pair here has a stored side
    candidates = set(zip(a.tolist(), b.tolist()))
    assert expected <= candidates
    settled = np.einsum("nd,nd->n", vectors[a], vectors[b]) >= 0.9
    assert set(zip(a[settled].tolist(), b[settled].tolist())) == expected


def test_the_exact_search_returns_the_most_similar_centroids_in_order():
    rng = np.random.default_rng(0)
    points = rng.standard_normal((1_000, 16)).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    search = CentroidSearch(points[:50])
    assert not search.two_level
    similarity, found = search.search(points, 3)
    exact = np.argsort(-(points @ points[:50].T), axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(found, exact)
    assert found.dtype == np.int64 and similarity.shape == (1_000, 3)


def test_boundary_visits_find_the_pairs_a_cluster_boundary_splits():
    """Ten topics cut into a hundred clusters: boundaries run through dense regions, and
    SemDeDup's within-cluster search misses pairs that visits to the next clusters find."""
    data = synthetic_shard(PoolSpec(per_shard=20_000, dim=512, topics=10, seed=3), 0)
    vectors = data.image.astype(np.float16).astype(np.float32)
    truth = brute_force_pairs(vectors, 0.05)
    within = clustered_pairs(vectors, 0.05, 100, boundary_clusters=0)
    visiting = clustered_pairs(vectors, 0.05, 100, boundary_clusters=4)
    assert within < truth and len(truth - within) >= 3
    assert visiting == truth


def run_steps(lake: LakeResource, shards: list[str], settings: DedupSettings) -> dict:
    info = centroids.update_centroids(lake, MODEL, shards, settings)
    committed = centroids.read_centroids(lake, MODEL)
    for shard in shards:
        record = assignment.read_record(lake, shard, MODEL)
        if record is None or record["centroids"] != info["version"]:
            assignment.assign_shard(lake, shard, MODEL, committed, settings)
    db = open_catalog(lake.url, MODEL)
    try:
        return {**near_duplicates.find_near_duplicates(lake, db, MODEL, shards, settings, log=lambda _: None),
                "centroids": info}
    finally:
        db.close()


def duplicates(lake: LakeResource, shards: list[str]) -> pa.Table:
    return pa.concat_tables([lake.read_parquet(f"{assignment_dir(s, MODEL)}/duplicates.parquet") for s in shards])


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Three shards of 2,000 samples with planted duplicates, the three steps run over them."""
    lake = LakeResource(root=str(tmp_path_factory.mktemp("dedup") / "lake"))
    spec = PoolSpec(per_shard=2_000, dim=64, topics=20, seed=5)
    planted = pa.concat_tables([write_synthetic_shard(lake, spec, n, MODEL) for n in range(3)])
    # Trained on half the pool: the rest gives held-out vectors to fit the offsets on.
    settings = DedupSettings(cluster_size=100, eps=0.1, min_thumbnail_correlation=0.9, max_training_samples=3_000,
                             balance_clusters=True)
    first = run_steps(lake, [shard_name(n) for n in range(3)], settings)
    return {"lake": lake, "spec": spec, "planted": planted, "settings": settings, "first": first}


def test_offsets_even_out_the_clusters_and_lose_no_pair():
    """Centroids trained on 20 vectors each draw vectors they were not trained on unevenly (the
    ones nearest the middle of a topic take most); offsets fitted on held-out vectors even the
    clusters out, and the clustered search still finds what it found without them."""
    data = synthetic_shard(PoolSpec(per_shard=30_000, dim=512, topics=20, seed=5), 0)
    vectors = data.image.astype(np.float16).astype(np.float32)
    train, held_out, test = vectors[:4_000], vectors[4_000:8_000], vectors[10_000:]
    trained = centroids.train_centroids(train, 200, seed=0)
    offsets = centroids.balance_offsets(trained, held_out)
    truth = brute_force_pairs(test, 0.1)
    found = {}
    for name, search in (("plain", CentroidSearch(trained)), ("offsets", CentroidSearch(trained, offsets=offsets))):
        result = assignment.assign(test, trained, 0.1, 1, search)
        sizes = np.sort(np.bincount(result.cluster, minlength=len(trained)))[::-1]
        found[name] = (sizes[:20].sum() / len(test), set_of_pairs(test, result))
        if name == "offsets":  # the similarity kept is the plain cosine to the centroid taken
            np.testing.assert_allclose(result.similarity, np.einsum("ij,ij->i", test, trained[result.cluster]),
                                       rtol=1e-5)
    assert found["plain"][0] > 0.45 and found["offsets"][0] < 0.25  # the largest tenth of the clusters' share
    assert found["offsets"][1] <= truth and len(truth - found["offsets"][1]) <= len(truth - found["plain"][1])
    assert len(truth - found["offsets"][1]) <= 0.05 * len(truth)


def test_without_balance_clusters_no_sample_is_held_out_and_the_offsets_are_zero(pool, tmp_path):
    lake, spec = LakeResource(root=str(tmp_path / "lake")), pool["spec"]
    for n in range(2):
        write_synthetic_shard(lake, spec, n, MODEL)
    settings = DedupSettings(cluster_size=100, max_training_samples=2_000)
    info = centroids.update_centroids(lake, MODEL, [shard_name(n) for n in range(2)], settings)
    assert info["training_samples"] == 2_000 and info["held_out_samples"] == 0
    assert not centroids.read_centroids(lake, MODEL).offsets.any()


def set_of_pairs(vectors: np.ndarray, result: assignment.Assignment) -> set[tuple[int, int]]:
    rows = assignment.cluster_order(result)
    a, b, _ = cluster_pairs(vectors[rows[:, 1]], rows[:, 0], rows[:, 1].astype(np.int64),
                            rows[:, 2].astype(bool), np.ones(len(rows), bool), 0.1)
    return set(zip(a.tolist(), b.tolist()))


def test_planted_duplicates_are_found_and_the_first_sample_kept(pool):
    lake, planted = pool["lake"], pool["planted"]
    info = pool["first"]["centroids"]
    assert info["training_samples"] == 3_000 and info["held_out_samples"] == 600  # a fifth of the training sample
    assert np.abs(centroids.read_centroids(lake, MODEL).offsets).max() > 0
    table = duplicates(lake, [shard_name(n) for n in range(3)])
    assert table.num_rows == 6_000 and pool["first"]["mode"] == "full"
    flagged = {(r["shard"], r["key"]) for r in table.to_pylist() if r["is_duplicate"]}
    exact = planted.filter(pc.equal(planted.column("kind"), "exact"))
    assert {(r["shard"], r["key"]) for r in exact.to_pylist()} <= flagged  # every exact copy
    planted_keys = {(r["shard"], r["key"]) for r in planted.to_pylist()}
    assert len(flagged & planted_keys) >= 0.9 * len(planted_keys)  # near ones within eps and alike
    assert len(flagged - planted_keys) <= 0.02 * len(flagged)
    rows = {r["key"]: r for r in table.to_pylist()}
    for row in rows.values():
        if row["is_duplicate"]:
            keeper = rows[row["duplicate_of"]]
            assert not keeper["is_duplicate"] and (keeper["shard"], keeper["key"]) < (row["shard"], row["key"])
    reasons = pc.value_counts(table.column("duplicate_reason").drop_null()).to_pylist()
    assert {r["values"] for r in reasons} >= {"exact", "semantic"}


def test_a_new_shard_is_assigned_alone_and_compared_alone_with_the_same_result_as_a_full_run(pool, tmp_path):
    lake, spec, settings = pool["lake"], pool["spec"], pool["settings"]
    write_synthetic_shard(lake, spec, 3, MODEL)
    shards = [shard_name(n) for n in range(4)]
    before = {s: assignment.read_record(lake, s, MODEL)["version"] for s in shards[:3]}
    grown = run_steps(lake, shards, settings)
    assert not grown["centroids"]["retrained"]  # 8,000 samples: within twice the 6,000 trained for
    assert {s: assignment.read_record(lake, s, MODEL)["version"] for s in shards[:3]} == before
    assert grown["mode"] == "incremental" and grown["compared_shards"] == 1
    incremental = duplicates(lake, shards)
    lake.remove(f"{dedup_dir(MODEL)}/state.json")
    full = run_steps(lake, shards, settings)
    assert full["mode"] == "full" and full["compared_shards"] == 4
    assert duplicates(lake, shards).equals(incremental)
    assert incremental.filter(pc.equal(incremental.column("shard"), "000003")).column("is_duplicate").to_pylist() \
        .count(True) > 0


def test_incremental_runs_read_the_cluster_major_base_and_equal_a_full_run(pool, tmp_path):
    """A full run writes the cluster-major base; a new shard then reads only the clusters it
    touches, the others' rows from the base (8-bit: candidates checked against the shards'
    exact vectors); a departed shard's base rows are left out; once
    the shards outside the base pass rebase_share, the base is written again. Each result
    equals a full run's."""
    lake, spec = LakeResource(root=str(tmp_path / "lake")), pool["spec"]
    for n in range(6):
        write_synthetic_shard(lake, spec, n, MODEL)
    shards = [shard_name(n) for n in range(6)]
    settings = DedupSettings(cluster_size=100, min_thumbnail_correlation=0.9, rebase_share=0.45)

    def base() -> dict:
        return lake.read_json(f"{dedup_dir(MODEL)}/state.json")["base"]

    def equals_a_full_run(now: list[str]) -> None:
        copy = LakeResource(root=str(tmp_path / f"full-{len(list(tmp_path.iterdir()))}"))
        shutil.copytree(lake.root, copy.root)
        copy.remove(f"{dedup_dir(MODEL)}/state.json")
        assert run_steps(copy, now, settings)["mode"] == "full"
        assert duplicates(copy, now).equals(duplicates(lake, now))

    def new_thumbnails(shard: str) -> None:
        hashes = lake.read_parquet(f"shards/{shard}/scores/image_hashes.parquet").replace_schema_metadata()
        noise = np.random.default_rng(1).integers(0, 256, (hashes.num_rows, 64), dtype=np.uint8)
        write_scores(lake, shard, "image_hashes", hashes.set_column(
            hashes.column_names.index("thumbnail"), "thumbnail", pa.array([r.tobytes() for r in noise], pa.binary(64))))

    def clusters_of(shard: str) -> np.ndarray:
        version = assignment.read_record(lake, shard, MODEL)["version"]
        return lake.read_npy(f"{assignment_dir(shard, MODEL)}/versions/{version}/rows.npy")[:, 0]

    first = run_steps(lake, shards[:5], settings)
    assert first["rebased"] and first["rows_read"] == sum(len(clusters_of(s)) for s in shards[:5])
    written = base()
    assert [s for s, _ in written["shards"]] == shards[:5]

    grown = run_steps(lake, shards, settings)  # one shard of six outside the base
    assert grown["mode"] == "incremental" and not grown["rebased"] and base() == written
    assert written["format"] == "int8" and grown["checked_against_exact"] > 0  # pairs through 8-bit rows
    touched = np.unique(clusters_of(shards[5]))  # only these clusters' rows are read
    assert grown["rows_read"] == sum(int(np.isin(clusters_of(s), touched).sum()) for s in shards)
    new = duplicates(lake, [shards[5]])
    assert new.column("is_duplicate").to_pylist().count(True) > 0
    equals_a_full_run(shards)

    without = shards[:2] + shards[3:]  # a shard departs: nothing is read; then its base rows are left out
    assert run_steps(lake, without, settings)["rows_read"] == 0
    new_thumbnails(shards[1])  # compared again, from its own files: two of five shards outside the base
    changed = run_steps(lake, without, settings)
    assert changed["compared_shards"] == 1 and not changed["rebased"] and base() == written
    equals_a_full_run(without)

    new_thumbnails(shards[3])  # with the new shard, three of five outside: the base is written again
    new_thumbnails(shards[4])
    again = run_steps(lake, without, settings)
    assert again["rebased"] and [s for s, _ in base()["shards"]] == without
    assert not lake.exists(f"{dedup_dir(MODEL)}/base/{written['version']}")  # the old one removed
    equals_a_full_run(without)

    lake.remove(f"{dedup_dir(MODEL)}/base", recursive=True)  # its files gone: read every cluster, write it again
    new_thumbnails(shards[0])
    assert run_steps(lake, without, settings)["rebased"] and lake.exists(
        f"{dedup_dir(MODEL)}/base/{base()['version']}/counts.npy")
    equals_a_full_run(without)


def test_a_small_memory_budget_takes_more_cluster_ranges_and_finds_the_same_groups(pool, tmp_path):
    lake, spec = LakeResource(root=str(tmp_path / "lake")), pool["spec"]
    for n in range(2):
        write_synthetic_shard(lake, spec, n, MODEL)
    shards = [shard_name(n) for n in range(2)]
    roomy = run_steps(lake, shards, DedupSettings(cluster_size=100))
    groups = duplicates(lake, shards)
    lake.remove(f"{dedup_dir(MODEL)}/state.json")
    tight = run_steps(lake, shards, DedupSettings(cluster_size=100, memory_budget_bytes=64 * 1024))
    assert roomy["cluster_ranges"] == 1 and tight["cluster_ranges"] > 10
    assert duplicates(lake, shards).equals(groups)


def test_the_hard_rule_keeps_the_sample_farthest_from_its_centroid(pool, tmp_path):
    lake, spec = LakeResource(root=str(tmp_path / "lake")), pool["spec"]
    write_synthetic_shard(lake, spec, 0, MODEL)
    run_steps(lake, ["000000"], DedupSettings(cluster_size=100, keep="hard", min_thumbnail_correlation=0))
    table = duplicates(lake, ["000000"]).to_pylist()
    similarity = dict(zip(*(lake.read_parquet(f"{assignment_dir('000000', MODEL)}/assignment.parquet")
                            .select(["key", "centroid_similarity"]).to_pydict().values())))
    members: dict[str, list[str]] = {}
    for row in table:
        if row["group_size"] > 1:
            keeper = row["duplicate_of"] or row["key"]
            members.setdefault(keeper, []).append(row["key"])
    assert members
    for keeper, group in members.items():
        assert similarity[keeper] == min(similarity[k] for k in group)


def test_ranged_npy_reads_and_streamed_writes_return_the_rows_asked_for(tmp_path):
    for root in (str(tmp_path / "lake"), "memory://ranged-npy"):
        lake = LakeResource(root=root)
        array = np.arange(7 * 5, dtype=np.float16).reshape(7, 5)
        lake.write_npy("a.npy", array)
        assert np.array_equal(lake.read_npy_rows("a.npy", 2, 5), array[2:5])
        assert lake.read_npy_rows("a.npy", 6, 99).shape == (1, 5) and lake.read_npy_rows("a.npy", 3, 3).shape == (0, 5)
        assert np.array_equal(lake.read_npy_runs("a.npy", [(0, 2), (3, 3), (5, 99)]), array[[0, 1, 5, 6]])
        lake.write_npy_parts("b.npy", array.shape, np.float16, (array[i:i + 3] for i in range(0, 7, 3)))
        assert np.array_equal(lake.read_npy("b.npy"), array)
        with pytest.raises(ValueError, match="6 rows written"):
            lake.write_npy_parts("c.npy", array.shape, np.float16, [array[:6]])
        assert not lake.exists("c.npy")


def test_a_shard_assigned_against_old_centroids_is_left_out_and_leaves_the_duplicates(pool, tmp_path):
    lake, spec = LakeResource(root=str(tmp_path / "lake")), pool["spec"]
    for n in range(2):
        write_synthetic_shard(lake, spec, n, MODEL)
    shards = [shard_name(n) for n in range(2)]
    run_steps(lake, shards, DedupSettings(cluster_size=100))
    settings = DedupSettings(cluster_size=50)  # other centroids; only the first shard is assigned again
    info = centroids.update_centroids(lake, MODEL, shards, settings)
    assert info["retrained"] and info["reason"] == \
        "cluster_size, max_training_samples, seed or balance_clusters changed"
    assignment.assign_shard(lake, shards[0], MODEL, centroids.read_centroids(lake, MODEL), settings)
    db = open_catalog(lake.url, MODEL)
    try:
        figures = near_duplicates.find_near_duplicates(lake, db, MODEL, shards, settings, log=lambda _: None)
    finally:
        db.close()
    assert figures["left_out_shards"] == {shards[1]: "assigned against other centroids: its dedup_assignment is "
                                                      "stale"}
    assert figures["mode"] == "full" and figures["samples"] == spec.per_shard
    assert lake.exists(f"{assignment_dir(shards[0], MODEL)}/duplicates.parquet")
    assert not lake.exists(f"{assignment_dir(shards[1], MODEL)}/duplicates.parquet")


def test_new_thumbnails_make_their_shard_compared_again(pool, tmp_path):
    """A shard's pairs are kept only while its assignment and its image_hashes are unchanged:
    thumbnails that no longer match undo the near duplicates they confirmed."""
    lake, spec = LakeResource(root=str(tmp_path / "lake")), pool["spec"]
    planted = pa.concat_tables([write_synthetic_shard(lake, spec, n, MODEL) for n in range(2)])
    shards = [shard_name(n) for n in range(2)]
    settings = DedupSettings(cluster_size=100)
    run_steps(lake, shards, settings)
    near = planted.filter(pc.and_(pc.equal(planted.column("kind"), "near"), pc.equal(planted.column("shard"),
                                                                                      shards[1])))
    flagged = {r["key"] for r in duplicates(lake, shards).to_pylist() if r["duplicate_reason"] == "semantic"}
    assert flagged & set(near.column("key").to_pylist())
    hashes = lake.read_parquet(f"shards/{shards[1]}/scores/image_hashes.parquet").replace_schema_metadata()
    noise = np.random.default_rng(0).integers(0, 256, (hashes.num_rows, 64), dtype=np.uint8)
    write_scores(lake, shards[1], "image_hashes", hashes.set_column(  # as the image_hashes step writes
        hashes.column_names.index("thumbnail"), "thumbnail", pa.array([row.tobytes() for row in noise],
                                                                      pa.binary(64))))
    again = run_steps(lake, shards, settings)
    assert again["mode"] == "incremental" and again["compared_shards"] == 1
    flagged = {r["key"] for r in duplicates(lake, shards).to_pylist() if r["duplicate_reason"] == "semantic"}
    assert not flagged & set(near.column("key").to_pylist())


def test_a_hash_group_that_loses_its_first_sample_stays_one_group(pool, tmp_path):
    """Exact-hash pairs link each sample to its group's first: when the first's shard changes and
    its hash with it, the group's other samples are searched again, not left unlinked; the
    incremental result equals a full run's."""
    lake, spec = LakeResource(root=str(tmp_path / "lake")), pool["spec"]
    shards = [shard_name(n) for n in range(3)]
    for n in range(3):
        write_synthetic_shard(lake, spec, n, MODEL)

    def set_sha256(shard: str, row: int, value: str) -> str:
        hashes = lake.read_parquet(f"shards/{shard}/scores/image_hashes.parquet").replace_schema_metadata()
        column = hashes.column("sha256").to_pylist()
        column[row] = value
        write_scores(lake, shard, "image_hashes", hashes.set_column(
            hashes.column_names.index("sha256"), "sha256", pa.array(column, pa.string())))
        return hashes.column("key")[row].as_py()

    first, second, third = (set_sha256(shard, 7, "f" * 64) for shard in shards)
    settings = DedupSettings(cluster_size=100)
    run_steps(lake, shards, settings)
    rows = {r["key"]: r for r in duplicates(lake, shards).to_pylist()}
    assert rows[second]["duplicate_of"] == first and rows[third]["duplicate_of"] == first

    set_sha256(shards[0], 7, "0" * 64)  # the group's first sample leaves it
    again = run_steps(lake, shards, settings)
    assert again["mode"] == "incremental" and again["compared_shards"] == 1
    incremental = duplicates(lake, shards).sort_by([("shard", "ascending"), ("key", "ascending")])
    rows = {r["key"]: r for r in incremental.to_pylist()}
    assert rows[third]["duplicate_of"] == second and rows[third]["duplicate_reason"] == "exact"
    assert rows[first]["duplicate_of"] != second and rows[second]["group_size"] == 2
    lake.remove(f"{dedup_dir(MODEL)}/state.json")  # no state: a full run
    assert run_steps(lake, shards, settings)["mode"] == "full"
    assert duplicates(lake, shards).sort_by([("shard", "ascending"), ("key", "ascending")]).equals(incremental)


def test_blocks_give_runs_as_views_and_the_rest_gathered():
    """The rows the pairwise step multiplies: long runs of consecutive rows are views of the
    table (no copy), short ones gathered; every block holds exactly its positions' rows."""
    import torch

    from assets.dedup.pairs import RUN_ROWS, Workspace, _blocks

    table = torch.from_numpy(np.random.default_rng(0).standard_normal((1_000, 8)).astype(np.float32))
    positions = np.concatenate([np.arange(10, 10 + RUN_ROWS + 5), [300, 302, 305], np.arange(400, 400 + 3 * RUN_ROWS),
                                [999]])
    seen = []
    for part, block in _blocks(positions, table, Workspace(), chunk=2 * RUN_ROWS):
        assert torch.equal(block, table[torch.from_numpy(part)])
        assert len(part) <= 2 * RUN_ROWS
        seen.append((part.copy(), block.data_ptr() >= table.data_ptr() and
                     block.data_ptr() < table.data_ptr() + table.numel() * 4))
    assert sorted(np.concatenate([p for p, _ in seen]).tolist()) == sorted(positions.tolist())
    views = [p for p, is_view in seen if is_view]
    assert sum(len(p) for p in views) == RUN_ROWS + 5 + 3 * RUN_ROWS  # both runs, uncopied
