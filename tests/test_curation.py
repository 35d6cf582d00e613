"""Curation measured against the sample crawl's ground truth: filters, policies, dedup, exports."""

import hashlib
import json
import math
import shutil

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from dagster import AssetKey, DagsterInstance, materialize

from assets.export import UID_DTYPE
from assets.scores.caption_terms import caption_groups, entries, group_patterns
from assets.scores.text_match import PhraseMatcher, normalize
from assets.subsets import calibrated_params, uid_array
from orchestration.definitions import build_definitions
from resources.catalog import Catalog
from resources.clip_model import DEMO_CHECKPOINT, DEMO_MODEL, model_id
from resources.lake import LakeResource
from tests.conftest import run_cli

MODEL_ID = model_id(DEMO_MODEL, DEMO_CHECKPOINT)
PARAMS = calibrated_params(DEMO_CHECKPOINT)


def _members(lake: LakeResource, policy: str) -> set[str]:
    return set(lake.read_parquet(f"subsets/{policy}/members.parquet").column("key").to_pylist())


def test_toxicity_flags_the_toxic_captions(catalog, truth):
    rows = catalog.query("SELECT key, toxicity, flagged_terms FROM scores").to_pylist()
    toxic = [r for r in rows if truth[r["key"]]["defect"] == "toxic_caption"]
    clean = [r for r in rows if truth[r["key"]]["defect"] is None]
    assert np.mean([r["toxicity"] > 0.5 for r in toxic]) >= 0.9
    assert np.mean([r["flagged_terms"] > 0 for r in toxic]) >= 0.9
    assert np.mean([r["toxicity"] > 0.5 for r in clean]) <= 0.02
    assert all(r["flagged_terms"] == 0 for r in clean)


def test_concepts_match_whole_words_after_padding_punctuation():
    matcher = PhraseMatcher(["star", "red circle", "circle"])
    assert matcher.match("A RED circle, and a star!") == [1, 2, 0]
    assert matcher.match("a starfish in a circles-free zone") == []
    assert matcher.match(None) == []
    # A whole column at once: Unicode spaces and underscores as Python's str.split / \w see them.
    column = pa.array(["Ünïcödé RED\u00a0circle\u2003star", None, "red_circle star star", "circle red circle"])
    assert matcher.match_all(column).to_pylist() == [[1, 2, 0], [], [0], [2, 1]]


def test_caption_group_is_the_one_group_named_as_duckdb_matches_it():
    """caption_groups (Arrow's RE2, once per shard) labels captions as the audits' SQL did
    (DuckDB's RE2 over lower(caption): a group when exactly one group's pattern matches)."""
    patterns = group_patterns()
    captions = ["A man and his dog", "Two WOMEN walking", "a man and a woman", "mankind and womanhood", None, "",
                "the boy's hat", "Her-story", "ÉLÈVE: she said", "he\u00a0ran", "a red circle", "Men, men, MEN!"]
    ours = caption_groups(pa.array(captions, pa.string()), patterns).to_pylist()
    connection = duckdb.connect()
    connection.register("captions", pa.table({"i": list(range(len(captions))), "caption": captions}))
    connection.register("patterns", pa.table({"group_name": list(patterns), "pattern": list(patterns.values())}))
    rows = connection.execute(
        "SELECT c.i, any_value(p.group_name) FROM captions AS c "
        "JOIN patterns AS p ON regexp_matches(lower(c.caption), p.pattern) GROUP BY c.i HAVING count(*) = 1"
    ).fetchall()
    expected = [None] * len(captions)
    for i, group in rows:
        expected[i] = group
    assert ours == expected
    assert ours[:4] == ["man", "woman", None, None] and ours[6:8] == ["man", "woman"]


def test_concept_ids_name_entries_in_the_caption(catalog):
    listed = entries()
    english = "SELECT caption, concept_ids FROM scores WHERE language = 'en' AND caption_words > 3 LIMIT 300"
    for row in catalog.query(english).to_pylist():
        padded = " " + " ".join(normalize(row["caption"]).split()) + " "
        assert row["concept_ids"], row["caption"]  # every scene caption names a shape and colours
        assert all(f" {listed[i]} " in padded for i in row["concept_ids"])


def test_aesthetic_rates_clean_pictures_above_watermarked_ones(catalog, truth):
    rows = catalog.query("SELECT key, aesthetic FROM scores").to_pylist()
    clean = np.mean([r["aesthetic"] for r in rows if truth[r["key"]]["defect"] is None])
    marked = np.mean([r["aesthetic"] for r in rows if truth[r["key"]]["defect"] == "watermark"])
    assert clean - marked > 1.5


def test_near_duplicates_recall_and_precision_at_least_0_9(catalog, truth):
    table = catalog.query("SELECT * FROM duplicates").to_pylist()
    assert len(table) == catalog.query("SELECT count(*) AS n FROM scores").column("n")[0].as_py()
    flagged = {r["key"] for r in table if r["is_duplicate"]}
    planted = {r["key"] for r in table if truth[r["key"]]["defect"] in ("exact_duplicate", "near_duplicate")}
    recall, precision = len(flagged & planted) / len(planted), len(flagged & planted) / len(flagged)
    assert recall >= 0.9 and precision >= 0.9, (recall, precision)
    by_key = {r["key"]: r for r in table}
    for row in table:
        if row["is_duplicate"]:  # the keeper is the group's first sample in (shard, key) order
            keeper = by_key[row["duplicate_of"]]
            assert (keeper["shard"], keeper["key"]) < (row["shard"], row["key"])
            assert not keeper["is_duplicate"]
    for row in table:  # every exact copy lands in its original's group
        if truth[row["key"]]["defect"] == "exact_duplicate":
            original = by_key[truth[row["key"]]["duplicate_of"]]
            assert row["is_duplicate"] and row["duplicate_of"] in (original["key"], original["duplicate_of"])


def test_dedup_clusters_the_pool_and_each_shard_is_assigned_against_the_same_centroids(lake, catalog):
    info = lake.read_json(f"dedup/{MODEL_ID}/centroids.json")
    pool = catalog.query("SELECT count(*) AS n FROM scores").column("n")[0].as_py()
    assert info["clusters"] == pool // 200 and info["training_samples"] == pool
    shards = catalog.query("SELECT DISTINCT shard FROM scores ORDER BY shard").column("shard").to_pylist()
    for shard in shards:
        record = json.loads(lake.parquet_metadata(f"shards/{shard}/dedup/{MODEL_ID}/assignment.parquet")
                            ["clipsieve.dedup_assignment"])
        assert record["centroids"] == info["version"]
    clusters = catalog.query("SELECT count(DISTINCT cluster) AS n FROM duplicates").column("n")[0].as_py()
    assert 1 < clusters <= info["clusters"]


def test_datacomp_policies(lake, catalog):
    p = PARAMS["datacomp_basic"]
    rows = catalog.query("SELECT key, similarity, language, caption_words, caption_chars, min_side, aspect_ratio "
                         "FROM scores").to_pylist()
    basic = [r for r in rows if r["language"] == "en" and r["caption_words"] > 2 and r["caption_chars"] > 5
             and r["min_side"] >= p["min_side"] and r["aspect_ratio"] <= 3]
    assert _members(lake, "datacomp_basic") == {r["key"] for r in basic}
    top = sorted(basic, key=lambda r: -r["similarity"])[: math.ceil(0.3 * len(basic))]
    kept = _members(lake, "datacomp_clip_top30")
    assert len(kept) == len(top)
    assert min(r["similarity"] for r in basic if r["key"] in kept) >= max(
        r["similarity"] for r in basic if r["key"] not in kept)


def test_metaclip_balancing_keeps_the_tail_and_thins_the_head(lake, catalog, tmp_path):
    t = PARAMS["metaclip_balanced"]["t"]
    rows = catalog.query("SELECT key, concept_ids FROM scores").to_pylist()
    kept = _members(lake, "metaclip_balanced")
    counts: dict[int, int] = {}
    for row in rows:
        for entry in row["concept_ids"]:
            counts[entry] = counts.get(entry, 0) + 1
    assert not {r["key"] for r in rows if not r["concept_ids"]} & kept  # no entry: dropped
    tail = [r for r in rows if any(counts[e] <= t for e in r["concept_ids"])]
    assert tail and all(r["key"] in kept for r in tail)  # a tail entry keeps every sample
    # A sample with head entries only is kept with probability 1 - prod(1 - t / count).
    head_only = [r for r in rows if r["concept_ids"] and all(counts[e] > t for e in r["concept_ids"])]
    expected = np.mean([1 - np.prod([1 - t / counts[e] for e in r["concept_ids"]]) for r in head_only])
    observed = np.mean([r["key"] in kept for r in head_only])
    assert len(head_only) > 100 and abs(observed - expected) < 0.1 and observed < 0.9
    # Each (sample, entry) draw is a seeded hash: the same seed gives the same subset.
    from assets.subsets import load_policies, run_policy
    policy = next(p for p in load_policies() if p.name == "metaclip_balanced")
    again = run_policy(catalog, policy, {"t": t, "seed": 0}, str(tmp_path))[0].read()
    other = run_policy(catalog, policy, {"t": t, "seed": 1}, str(tmp_path))[0].read()
    assert set(again.column("key").to_pylist()) == kept
    assert set(other.column("key").to_pylist()) != kept


def test_safe_removes_every_planted_defect_and_keeps_clean_samples(lake):
    evaluation = lake.read_json("evaluation/metrics.json")
    safe = evaluation["policies"]["safe"]
    for defect, survives in safe["survives"].items():
        if defect != "clean":
            assert survives <= 0.1, (defect, survives)
    assert safe["clean_dropped"] <= 0.1


def test_evaluate_cli_prints_and_writes_every_filter(materialized, tmp_path):
    out = tmp_path / "evaluation.json"
    result = run_cli("evaluate", "--lake", str(materialized["lake"]), "--truth",
                     str(materialized["crawl"] / "ground_truth.parquet"), "--json-out", str(out))
    written = json.loads(out.read_text())
    names = {f["filter"] for f in written["filters"]}
    assert {"clip_similarity", "nsfw", "watermark", "toxicity", "language", "near_duplicates"} <= names
    assert "| safe |" in result.stdout and "AUROC" in result.stdout
    for f in written["filters"]:
        assert f["auroc"] is None or 0.0 <= f["auroc"] <= 1.0
    nsfw = next(f for f in written["filters"] if f["filter"] == "nsfw")
    assert nsfw["auroc"] > 0.95 and nsfw["threshold"] == 0.5


def test_export_formats_read_back_with_their_libraries(materialized, lake, tmp_path):
    members = lake.read_parquet("subsets/safe/members.parquet")
    run_cli("export", "--lake", str(materialized["lake"]), "--subset", "safe", "--format", "uids",
            "--out", str(tmp_path / "uids"))
    uids = np.load(tmp_path / "uids" / "safe_uids.npy")
    assert uids.dtype == UID_DTYPE and len(uids) == members.num_rows
    assert (np.sort(uids, order=["f0", "f1"]) == uids).all()
    first = members.column("uid")[0].as_py()
    assert (int(first[:16], 16), int(first[16:], 16)) in set(uids.tolist())

    run_cli("export", "--lake", str(materialized["lake"]), "--subset", "safe", "--format", "parquet",
            "--out", str(tmp_path / "pq"))
    rows = pq.read_table(tmp_path / "pq" / "safe.parquet")
    assert rows.num_rows == members.num_rows and {"similarity", "punsafe", "is_duplicate"} <= set(rows.column_names)

    run_cli("export", "--lake", str(materialized["lake"]), "--subset", "safe", "--format", "webdataset",
            "--out", str(tmp_path / "wds"), "--crawl", str(materialized["crawl"]), "--samples-per-shard", "200")
    tars = sorted(str(p) for p in (tmp_path / "wds").glob("*.tar"))
    assert len(tars) == math.ceil(members.num_rows / 200)
    samples = list(wds.WebDataset(tars, shardshuffle=False).decode("pil"))
    assert sorted(s["__key__"] for s in samples) == sorted(members.column("key").to_pylist())
    assert all(s["jpg"].size[0] > 0 and s["txt"] and s["json"]["key"] == s["__key__"] for s in samples[:20])
    shard_rows = pq.read_table(tmp_path / "wds" / "00000.parquet")
    assert shard_rows.num_rows == 200 and "status" in shard_rows.column_names


def test_a_sampled_subset_exports_uids_as_drawn_and_each_member_once(materialized, lake, catalog, tmp_path):
    """similarity_scs (Soft Cap Sampling): as many draws as the pool, leaning to the better
    matched pairs; the uid file repeats members as drawn, the parquet export holds each once."""
    members = lake.read_parquet("subsets/similarity_scs/members.parquet")
    draws = members.column("draws").to_numpy()
    pool = catalog.query("SELECT count(*) AS n FROM scores").column("n")[0].as_py()
    assert draws.sum() == pool and draws.min() >= 1 and draws.max() > 1 and members.num_rows < pool
    drawn = catalog.query("SELECT avg(s.similarity) AS drawn FROM subset_members m JOIN scores s USING (shard, key) "
                          "WHERE m.policy = 'similarity_scs'").column("drawn")[0].as_py()
    assert drawn > catalog.query("SELECT avg(similarity) AS pool FROM scores").column("pool")[0].as_py()
    run_cli("export", "--lake", str(materialized["lake"]), "--subset", "similarity_scs", "--format", "uids",
            "--out", str(tmp_path / "uids"))
    uids = np.load(tmp_path / "uids" / "similarity_scs_uids.npy")
    assert len(uids) == pool and (np.sort(uids, order=["f0", "f1"]) == uids).all()
    assert sorted(np.unique(uids, return_counts=True)[1].tolist()) == sorted(draws.tolist())
    run_cli("export", "--lake", str(materialized["lake"]), "--subset", "similarity_scs", "--format", "parquet",
            "--out", str(tmp_path / "pq"))
    rows = pq.read_table(tmp_path / "pq" / "similarity_scs.parquet", columns=["key", "draws"])
    assert rows.num_rows == members.num_rows and rows.column("draws").to_numpy().sum() == pool
    most = int(np.argmax(draws))
    explained = json.loads(run_cli("explain", "--lake", str(materialized["lake"]),
                                   members.column("key")[most].as_py()).stdout)
    assert explained["policies"]["similarity_scs"] == {"kept": True, "draws": int(draws[most])}


def test_uids_are_derived_from_keys_where_the_crawl_has_none():
    db = Catalog(connection=duckdb.connect())
    db.connection.register("candidate", pa.table({
        "shard": ["00001", "00001", "00002"], "key": ["000010001", "000010002", "000010002"],
        "uid": [None, "F" * 32, "f" * 32], "draws": [1, 1, 1]}))  # the third repeats the second's uid
    array = uid_array(db)
    assert array.dtype == UID_DTYPE and len(array) == 3 and np.all(np.diff(array["f0"].astype(float)) >= 0)
    halves = {tuple(int(h, 16) for h in (d[:16], d[16:])) for d in (
        hashlib.md5(b"000010001").hexdigest(), "f" * 32, hashlib.md5(b"00002/000010002").hexdigest())}
    assert set(map(tuple, array.tolist())) == halves


def test_a_broken_policy_fails_alone(tmp_path, materialized):
    (tmp_path / "broken.sql").write_text("SELECT key, shard FROM scores WHERE no_such_column > 0;\n")
    (tmp_path / "fine.sql").write_text("SELECT key, shard FROM scores WHERE similarity > 0.5;\n")
    # A copy of the session's lake, so the extra subsets stay out of the other tests' views.
    lake_copy = tmp_path / "lake"
    shutil.copytree(materialized["lake"], lake_copy, ignore=shutil.ignore_patterns("_dagster"))
    defs = build_definitions(policy_dir=tmp_path, crawl=str(materialized["crawl"]), lake=str(lake_copy))
    with DagsterInstance.ephemeral() as instance:
        result = materialize(list(defs.assets), instance=instance, resources=defs.resources, raise_on_error=False,
                             selection=[AssetKey("broken_subset"), AssetKey("fine_subset")])
    assert not result.success
    failures = [e for e in result.all_events if e.is_step_failure]
    assert len(failures) == 1 and failures[0].step_key == "broken_subset"
    assert "policy broken: query failed" in failures[0].step_failure_data.error.to_string()
    assert [e.asset_key.to_user_string() for e in result.get_asset_materialization_events()] == ["fine_subset"]


def test_perceptual_hash_is_the_sign_of_the_low_dct_coefficients_against_their_median():
    from scipy.fft import dctn

    from assets.scores.image_hashes import perceptual_hashes

    thumbnails = np.random.default_rng(3).random((40, 32, 32)).astype(np.float32) * 255
    for thumbnail, value in zip(thumbnails, perceptual_hashes(thumbnails)):
        low = dctn(thumbnail.astype(np.float64), type=2, norm="ortho")[:8, :8].ravel()
        bits = "".join("1" if c > np.median(low) else "0" for c in low)
        assert int(value) & (2**64 - 1) == int(bits, 2)  # most significant bit first, as int64
