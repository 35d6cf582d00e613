"""Policies run as SQL against real Parquet through DuckDB; broken ones fail with a clear message."""

import numpy as np
import pyarrow as pa
import pytest

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
