"""Policies run as SQL against real Parquet through DuckDB; broken ones fail with a clear message."""

import numpy as np
import pyarrow as pa
import pytest

from assets.definitions.flyt import FLYT_VIEWS
from assets.subsets import Policy, load_policies, run_policy
from resources.catalog import open_catalog
from resources.lake import LakeResource, embeddings_dir, samples_path, score_path

MODEL = "tiny-model"
KEYS = ["000000000", "000000001", "000000002", "000000003"]


@pytest.fixture
def catalog(tmp_path):
    """A one-shard lake with four scored samples written as the assets write them."""
    lake = LakeResource(root=str(tmp_path))
    shard = ["00000"] * 4
    lake.write_parquet(samples_path("00000"), pa.table({
        "key": KEYS, "shard": shard, "url": [f"http://x.invalid/{k}" for k in KEYS],
        "caption": ["a red circle", "a blue square", "ein Kreis", "junk"], "uid": ["a", "b", "c", "d"],
        "status": ["success"] * 4, "image_status": ["ok"] * 4,
    }))
    folder = embeddings_dir("00000", MODEL)
    lake.write_parquet(f"{folder}/keys.parquet", pa.table({"key": KEYS, "shard": shard, "row": [0, 1, 2, 3]}))
    base = {"key": KEYS, "shard": shard}
    lake.write_parquet(score_path("00000", "clip_similarity", MODEL),
                       pa.table({**base, "similarity": np.array([0.35, 0.29, 0.31, 0.1], np.float32)}))
    lake.write_parquet(score_path("00000", "nsfw", MODEL),
                       pa.table({**base, "punsafe": np.array([0.1, 0.2, 0.3, 0.9], np.float32)}))
    lake.write_parquet(score_path("00000", "watermark", MODEL),
                       pa.table({**base, "pwatermark": np.array([0.1, 0.9, 0.1, 0.1], np.float32)}))
    lake.write_parquet(score_path("00000", "language"), pa.table({
        **base, "language": ["en", "en", "de", "en"], "language_score": [0.9, 0.9, 0.9, 0.2]}))
    lake.write_parquet(score_path("00000", "quality"), pa.table({
        **base, "caption_words": [3, 3, 2, 1], "caption_chars": [12, 13, 9, 4], "width": [100] * 4,
        "height": [100] * 4, "min_side": [100] * 4, "aspect_ratio": [1.0] * 4}))
    lake.write_parquet(score_path("00000", "image_hashes"), pa.table({
        **base, "sha256": ["x", "y", "z", "x"], "phash": [1, 2, 3, 1]}))
    lake.write_parquet(score_path("00000", "aesthetic", MODEL), pa.table({**base, "aesthetic": [5.0, 6.0, 4.0, 2.0]}))
    lake.write_parquet(score_path("00000", "text_in_image", MODEL), pa.table({**base, "ptext": [0.1, 0.1, 0.9, 0.1]}))
    lake.write_parquet(score_path("00000", "toxicity"), pa.table({
        **base, "toxicity": [0.01, 0.02, 0.03, 0.9], "flagged_terms": [0, 0, 0, 1]}))
    lake.write_parquet(score_path("00000", "caption_terms"), pa.table({
        **base, "concept_ids": [[1, 2], [3], [], [1]], "concept_count": [2, 1, 0, 1],
        "caption_group": [None, "man", None, "woman"]}))
    db = open_catalog(lake.url, MODEL)
    assert "scores" not in db.missing, db.missing
    yield db
    db.close()


def _policy(name: str) -> Policy:
    return next(p for p in load_policies() if p.name == name)


def test_shipped_policies_apply_their_published_thresholds(catalog, tmp_path):
    members, params = run_policy(catalog, _policy("laion400m"), {}, str(tmp_path))
    members = members.read()
    assert members.column("key").to_pylist() == ["000000000", "000000002"]
    assert params == {"min_similarity": "0.3", "max_punsafe": "0.5"}
    members = run_policy(catalog, _policy("laion2b_en"), {}, str(tmp_path))[0].read()
    assert members.column("key").to_pylist() == ["000000000", "000000001"]
    assert members.column("uid").to_pylist() == ["a", "b"]


def test_parameters_are_replaced_by_calibration_or_config(catalog, tmp_path):
    members, params = run_policy(catalog, _policy("laion400m"), {"min_similarity": "0.05", "max_punsafe": 0.95},
                                 str(tmp_path))
    assert members.num_rows == 4 and params["min_similarity"] == "0.05"
    with pytest.raises(ValueError, match="unknown parameter"):
        run_policy(catalog, _policy("laion400m"), {"threshold": 1}, str(tmp_path))


@pytest.mark.parametrize("sql, message", [
    ("SELEC key FROM scores", "does not parse"),
    ("SELECT key FROM scores", "lacks column"),
    ("SELECT key, shard FROM scores WHERE no_such_column > 1", "query failed"),
    ("CREATE TABLE t AS SELECT 1; SELECT key, shard FROM scores", "only SET VARIABLE"),
    ("SELECT 'nope' AS key, '00000' AS shard", "not in the scored pool"),
])
def test_a_broken_policy_fails_with_its_name_and_reason(catalog, sql, message, tmp_path):
    with pytest.raises(ValueError, match=f"policy broken: .*{message}"):
        run_policy(catalog, Policy("broken", sql), {}, str(tmp_path))


def test_catalog_names_views_that_have_no_files_yet(tmp_path):
    db = open_catalog(str(tmp_path), MODEL)
    assert {"samples", "scores"} <= set(db.missing)
    with pytest.raises(Exception, match="views not available yet"):
        db.query("SELECT * FROM scores")
    db.close()


def test_the_in_memory_pool_gives_the_same_members_and_audit_figures_as_the_files(lake, tmp_path):
    """Subsets and audits read `scores` from an in-memory copy when the pool is small enough."""
    from assets.audits.metrics import audit_metrics
    from resources.catalog import CatalogResource
    from resources.clip_model import ClipModelResource

    model = ClipModelResource().model_id
    files, memory = CatalogResource(snapshot_max_rows=0), CatalogResource()
    plain, snapshot = files.open(lake.url, model, snapshot=True), memory.open(lake.url, model, snapshot=True)
    try:
        assert not plain.snapshot and snapshot.snapshot
        pool = plain.query("SELECT count(*) AS n FROM scores").column("n")[0].as_py()
        # a copy, not the view: rows written to it are not in the lake's files
        snapshot.connection.execute("DELETE FROM scores WHERE key IN (SELECT key FROM scores LIMIT 1)")
        assert snapshot.query("SELECT count(*) AS n FROM scores").column("n")[0].as_py() == pool - 1
        snapshot.close()
        snapshot = memory.open(lake.url, model, snapshot=True)
        for policy in load_policies():
            if any(policy.reads(view) for view in FLYT_VIEWS):  # the lake is materialized without --flyt
                continue
            assert run_policy(plain, policy, {}, str(tmp_path))[0].read().equals(
                run_policy(snapshot, policy, {}, str(tmp_path))[0].read()), policy.name
            assert audit_metrics(plain, policy.name) == audit_metrics(snapshot, policy.name), policy.name
        too_small = CatalogResource(snapshot_max_rows=pool - 1).open(lake.url, model, snapshot=True)
        assert not too_small.snapshot  # a pool over the cap is queried from the files
        too_small.close()
    finally:
        plain.close()
        snapshot.close()


def test_a_snapshot_read_again_in_the_process_follows_changes_to_the_lake(catalog, tmp_path):
    """The process keeps the scored pool for the next subset or audit step: the same rows
    while the lake's files are unchanged, the new rows as soon as a score file is rewritten."""
    from resources import catalog as catalog_module

    lake = LakeResource(root=str(tmp_path))
    sql = "SELECT key, similarity, caption_group FROM scores ORDER BY key"
    fresh = catalog.query(sql)
    first = open_catalog(lake.url, MODEL, snapshot_rows=100)
    assert first.snapshot and first.query(sql).equals(fresh)
    first.close()
    assert (lake.url, MODEL) in catalog_module._pools
    again = open_catalog(lake.url, MODEL, snapshot_rows=100)  # from the process's copy
    assert again.query(sql).equals(fresh)
    again.close()
    lake.write_parquet(score_path("00000", "clip_similarity", MODEL), pa.table({
        "key": KEYS, "shard": ["00000"] * 4, "similarity": np.array([0.9, 0.8, 0.7, 0.6], np.float32)}))
    changed = open_catalog(lake.url, MODEL, snapshot_rows=100)
    assert changed.query(sql).column("similarity").to_pylist() == pytest.approx([0.9, 0.8, 0.7, 0.6])
    changed.close()


def _sampling_policy(kind: str, score: str = "similarity", **params: object) -> Policy:
    settings = {"sampling": f"'{kind}'", "sampling_seed": 0, **params}
    lines = [f"SET VARIABLE {name} = {value};" for name, value in settings.items()]
    return Policy("sampled", "\n".join(lines) + f"\nSELECT key, shard, {score} AS score FROM scores;")


def test_a_sampling_policy_draws_a_multiset_by_score_seeded(catalog, tmp_path):
    # 20 draws (5 x the 4-sample pool) one at a time; similarity 0.35, 0.29, 0.31, 0.1.
    policy = _sampling_policy("soft_cap", total_size_share=5, batch_share=0.25, temperature=0.05,
                              repetition_penalty=0.5)
    members, params = run_policy(catalog, policy, {}, str(tmp_path))
    table = members.read()
    assert table.column_names == ["policy", "key", "shard", "uid", "draws"]
    draws = dict(zip(table.column("key").to_pylist(), table.column("draws").to_pylist()))
    assert sum(draws.values()) == 20 and params["sampling"] == "soft_cap"
    assert draws["000000000"] == max(draws.values()) and draws.get("000000003", 0) < draws["000000000"] / 2
    assert run_policy(catalog, policy, {}, str(tmp_path))[0].read().equals(table)
    reseeded = [run_policy(catalog, policy, {"sampling_seed": seed}, str(tmp_path))[0].read() for seed in range(1, 6)]
    assert any(not other.equals(table) for other in reseeded)


def test_hard_cap_caps_each_member_and_the_uid_file_repeats_members_as_drawn(catalog, tmp_path):
    from assets.subsets import uid_array

    policy = _sampling_policy("hard_cap", total_size_share=5, batch_share=0.5, temperature=0.01, frequency_limit=6)
    table = run_policy(catalog, policy, {}, str(tmp_path))[0].read()
    draws = table.column("draws").to_pylist()
    assert sum(draws) == 20 and max(draws) == 6 and len(draws) == 4  # the best three capped, the rest to the fourth
    catalog.connection.register("candidate", table)
    try:
        uids = uid_array(catalog)
    finally:
        catalog.connection.unregister("candidate")
    assert len(uids) == 20 and uids.tolist() == sorted(uids.tolist())
    assert sorted(np.unique(uids, return_counts=True)[1].tolist()) == sorted(draws)
    with pytest.raises(ValueError, match="policy sampled: 24 draws cannot be made from 4 scored members at most 5"):
        run_policy(catalog, policy, {"total_size_share": 6, "frequency_limit": 5}, str(tmp_path))


@pytest.mark.parametrize("sql, message", [
    ("SET VARIABLE sampling = 'top_k';\nSELECT key, shard, similarity AS score FROM scores", "sampling must be one of"),
    ("SET VARIABLE sampling = 'soft_cap';\nSELECT key, shard FROM scores", r"lacks column\(s\) \['score'\]"),
    ("SET VARIABLE sampling = 'soft_cap';\nSET VARIABLE temperature = 'warm';\n"
     "SELECT key, shard, similarity AS score FROM scores", "temperature must be a number"),
    ("SET VARIABLE sampling = 'soft_cap';\nSELECT key, shard, NULL::DOUBLE AS score FROM scores",
     "no member has a score"),
])
def test_a_broken_sampling_policy_fails_with_its_reason(catalog, sql, message, tmp_path):
    with pytest.raises(ValueError, match=f"policy broken: .*{message}"):
        run_policy(catalog, Policy("broken", sql), {}, str(tmp_path))


def test_subset_rates_count_a_member_as_often_as_it_was_drawn(catalog, tmp_path):
    """The unsafe, toxic sample drawn 17 times of 20 is 85% of the training data, not a quarter."""
    from assets.subsets import candidate_figures

    lake = LakeResource(root=catalog.lake_path)
    lake.write_parquet(f"shards/00000/dedup/{MODEL}/duplicates.parquet", pa.table({
        "key": KEYS, "shard": ["00000"] * 4, "cluster": [0] * 4, "is_duplicate": [False, False, False, True],
        "duplicate_of": [None, None, None, KEYS[0]], "duplicate_reason": [None, None, None, "exact"],
        "group_size": [2, 1, 1, 2]}))
    catalog = open_catalog(lake.url, MODEL)
    policy = _sampling_policy("hard_cap", score="CASE WHEN key = '000000003' THEN 10 ELSE 0 END",
                              total_size_share=5, batch_share=0.25, frequency_limit=17)
    members = run_policy(catalog, policy, {}, str(tmp_path))[0]
    draws = dict(zip(members.read().column("key").to_pylist(), members.read().column("draws").to_pylist()))
    assert draws["000000003"] == 17 and sum(draws.values()) == 20
    after = candidate_figures(catalog, "sampled", members)["after"]
    assert after["samples"] == len(draws) and after["draws"] == 20
    assert after["nsfw_rate"] == pytest.approx(17 / 20) and after["toxic_rate"] == pytest.approx(17 / 20)
    assert after["toxic"] == 17
    assert after["near_duplicate_rate"] == pytest.approx(17 / 20)
    # Drawing a member again is no exact duplicate: the rate counts distinct members' sha256
    sha256 = {"000000000": "x", "000000001": "y", "000000002": "z", "000000003": "x"}
    assert after["exact_duplicate_rate"] == pytest.approx(1 - len({sha256[k] for k in draws}) / len(draws))
    catalog.close()


def test_a_members_file_written_before_draws_reads_as_drawn_once(catalog, tmp_path):
    lake = LakeResource(root=str(tmp_path))
    lake.write_parquet("subsets/old/members.parquet", pa.table({
        "policy": ["old"], "key": [KEYS[0]], "shard": ["00000"], "uid": ["a"]}))
    db = open_catalog(lake.url, MODEL)
    try:
        assert db.query("SELECT policy, key, draws FROM subset_members").to_pylist() == [
            {"policy": "old", "key": KEYS[0], "draws": 1}]
    finally:
        db.close()
