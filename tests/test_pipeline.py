"""Every asset materialized through Dagster on a real crawl, checked against its inputs."""

import json

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, DagsterRunStatus

from assets.indices import search
from assets.subsets import calibrated_params
from orchestration.definitions import defs, per_shard_keys
from resources.clip_model import DEMO_CHECKPOINT, DEMO_MODEL, model_id
from resources.embedding_files import committed_version, load_embeddings
from resources.indexing import read_index
from resources.lake import embeddings_dir, index_dir, score_path
from tests.conftest import SHARDS, run_cli

MODEL_ID = model_id(DEMO_MODEL, DEMO_CHECKPOINT)
SHARD_NAMES = [f"{s:05d}" for s in range(SHARDS)]
PER_SHARD = [key.to_user_string() for key in per_shard_keys(defs)]
POLICIES = ["laion400m", "laion2b_en", "datacomp_basic", "datacomp_clip_top30", "metaclip_balanced", "safe"]


def test_every_asset_materialized_per_partition_in_the_instance(materialized):
    instance = DagsterInstance.from_config(str(materialized["home"]))
    assert sorted(instance.get_dynamic_partitions("shards")) == SHARD_NAMES
    for name in PER_SHARD:
        key = AssetKey.from_user_string(name)
        for shard in SHARD_NAMES:
            records = instance.fetch_materializations(
                AssetRecordsFilter(asset_key=key, asset_partitions=[shard]), limit=1).records
            assert records, (name, shard)
            assert records[0].asset_materialization.tags["dagster/code_version"]
    for policy in POLICIES:
        for kind in ("subset", "index", "audit"):
            assert instance.get_latest_materialization_event(AssetKey(f"{policy}_{kind}")) is not None
    for key in ("near_duplicates", "evaluation"):
        assert instance.get_latest_materialization_event(AssetKey(key)) is not None


def test_the_command_launches_the_jobs_through_the_instance_with_their_partitions(materialized):
    """As a UI backfill's runs: the per_shard job over a partition range, then cross_shard,
    each launched through the instance's run launcher (its own process, not the command's).
    The near-duplicate assignment is per shard below the pool's centroids: a second pair of
    runs."""
    from orchestration.runner import PARTITION_RANGE_END_TAG, PARTITION_RANGE_START_TAG, PID_TAG

    instance = DagsterInstance.from_config(str(materialized["home"]))
    runs = sorted(instance.get_runs(), key=lambda run: instance.get_run_record_by_id(run.run_id).create_timestamp)
    runs = runs[:5]  # the fixture's command (later tests run it again)
    assert [run.job_name for run in runs] == ["observe_crawl", "per_shard", "cross_shard", "per_shard", "cross_shard"]
    assert all(run.status == DagsterRunStatus.SUCCESS and PID_TAG not in run.tags for run in runs)
    for per_shard in (runs[1], runs[3]):
        assert (per_shard.tags[PARTITION_RANGE_START_TAG], per_shard.tags[PARTITION_RANGE_END_TAG]) == \
            (SHARD_NAMES[0], SHARD_NAMES[-1])
    assignment = AssetKey("dedup_assignment")
    assert set(runs[1].asset_selection) == {AssetKey.from_user_string(name) for name in PER_SHARD} - {assignment}
    assert runs[2].asset_selection == {AssetKey("dedup_centroids")} and runs[3].asset_selection == {assignment}
    assert AssetKey("near_duplicates") in runs[4].asset_selection


def test_embeddings_record_where_their_time_went(materialized):
    """The model is loaded once per process and charged to the shard that loaded it; the
    forward is part of each shard's time."""
    instance = DagsterInstance.from_config(str(materialized["home"]))
    records = instance.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey("embeddings")),
                                              limit=100).records
    metadata = {r.partition_key: r.asset_materialization.metadata for r in records}
    assert sorted(metadata) == SHARD_NAMES
    loads = [m["model_load_seconds"].value for m in metadata.values()]
    assert sum(load > 0 for load in loads) == 1 and sum(loads) > 0
    for m in metadata.values():
        assert 0 < m["forward_seconds"].value <= m["seconds"].value


def test_samples_keep_every_crawl_row_with_a_status(lake, materialized, truth):
    for shard in SHARD_NAMES:
        crawl_rows = pq.read_table(materialized["crawl"] / f"{shard}.parquet")
        samples = lake.read_parquet(f"shards/{shard}/samples.parquet").to_pylist()
        assert [r["key"] for r in samples] == crawl_rows.column("key").to_pylist()
        for row in samples:
            defect = truth[row["key"]]["defect"]
            if defect == "failed_download":
                assert row["image_status"] == "failed_to_download" and row["image_error"]
            elif defect == "corrupt_image":
                assert row["image_status"] == "corrupt_image" and row["image_error"]
            else:
                assert row["image_status"] == "ok" and row["tar_member"] == f"{row['key']}.jpg"


def test_embeddings_are_fp16_normalized_and_row_aligned(lake):
    for shard in SHARD_NAMES:
        folder = embeddings_dir(shard, MODEL_ID)
        files = f"{folder}/versions/{committed_version(lake, shard, MODEL_ID)}"
        image, text = lake.read_npy(f"{files}/img_emb.npy"), lake.read_npy(f"{files}/text_emb.npy")
        keys = lake.read_parquet(f"{folder}/keys.parquet")
        samples = lake.read_parquet(f"shards/{shard}/samples.parquet")
        usable = samples.filter(pc.equal(samples.column("image_status"), "ok")).column("key").to_pylist()
        assert image.dtype == np.float16 and text.dtype == np.float16
        assert image.shape == text.shape == (len(usable), 128)
        assert keys.column("key").to_pylist() == usable
        assert keys.column("row").to_pylist() == list(range(len(usable)))
        np.testing.assert_allclose(np.linalg.norm(image.astype(np.float32), axis=1), 1, atol=2e-3)


def test_scores_match_their_definitions(lake, truth):
    shard = SHARD_NAMES[0]
    _, image, text = load_embeddings(lake, shard, MODEL_ID)
    similarity = lake.read_parquet(score_path(shard, "clip_similarity", MODEL_ID)).column("similarity").to_numpy()
    np.testing.assert_allclose(similarity, (image * text).sum(1), atol=2e-3)
    for head, column in (("nsfw", "punsafe"), ("watermark", "pwatermark")):
        values = lake.read_parquet(score_path(shard, head, MODEL_ID)).column(column).to_numpy()
        assert len(values) == len(image) and ((values >= 0) & (values <= 1)).all()

    samples = {r["key"]: r for r in lake.read_parquet(f"shards/{shard}/samples.parquet").to_pylist()}
    for row in lake.read_parquet(score_path(shard, "quality")).to_pylist():
        caption = samples[row["key"]]["caption"]
        assert row["caption_words"] == len(caption.split()) and row["caption_chars"] == len(caption)
        assert row["min_side"] == min(row["width"], row["height"])
        assert row["aspect_ratio"] == pytest.approx(max(row["width"], row["height"]) / row["min_side"], rel=1e-5)

    languages = {r["key"]: r["language"] for r in lake.read_parquet(score_path(shard, "language")).to_pylist()}
    foreign = [languages[k] != "en" for k in languages if truth[k]["defect"] == "non_english"]
    clean = [languages[k] == "en" for k in languages if truth[k]["defect"] is None]
    assert np.mean(foreign) >= 0.9 and np.mean(clean) >= 0.95


def test_exact_duplicates_share_sha256_across_shards(lake, truth):
    hashes = {}
    for shard in SHARD_NAMES:
        hashes.update({r["key"]: r for r in lake.read_parquet(score_path(shard, "image_hashes")).to_pylist()})
    copies = [k for k in hashes if truth[k]["defect"] == "exact_duplicate"]
    assert copies
    for key in copies:
        original = hashes[truth[key]["duplicate_of"]]
        assert hashes[key]["sha256"] == original["sha256"] and hashes[key]["phash"] == original["phash"]


def test_subsets_are_the_policies_applied_to_the_scores(lake, catalog):
    params = calibrated_params(DEMO_CHECKPOINT)
    scores = catalog.query("SELECT key, similarity, punsafe, language FROM scores").to_pylist()
    expected = {
        "laion400m": {r["key"] for r in scores
                      if r["similarity"] >= params["laion400m"]["min_similarity"] and r["punsafe"] < 0.5},
        "laion2b_en": {r["key"] for r in scores
                       if r["similarity"] >= params["laion2b_en"]["min_similarity"] and r["language"] == "en"},
    }
    for policy in ("laion400m", "laion2b_en"):
        members = lake.read_parquet(f"subsets/{policy}/members.parquet")
        assert set(members.column("key").to_pylist()) == expected[policy]
        assert 0 < members.num_rows < len(scores)
        assert set(members.column("policy").to_pylist()) == {policy}


def test_index_holds_the_members_and_finds_each_one_first(lake):
    for policy in POLICIES:
        folder = index_dir(policy, MODEL_ID)
        index, keys = read_index(lake, folder)
        members = lake.read_parquet(f"subsets/{policy}/members.parquet")
        assert index.ntotal == members.num_rows == keys.num_rows
        assert sorted(keys.column("key").to_pylist()) == sorted(members.column("key").to_pylist())
        info = lake.read_json(f"{folder}/index_info.json")
        assert {"factory", "memory_bytes", "build_seconds", "recall_at_10"} <= set(info)
        assert info["recall_at_10"] == 1.0  # flat search is exact
        shard = keys.column("shard")[0].as_py()
        shard_keys_table, vectors, _ = load_embeddings(lake, shard, MODEL_ID)
        shard_keys = shard_keys_table.column("key").to_pylist()
        probe = keys.column("key")[0].as_py()
        (hits,) = search(index, keys, vectors[[shard_keys.index(probe)]], k=5)
        assert hits[0][1] == pytest.approx(max(score for _, score in hits), abs=1e-6)
        assert probe in [key for key, score in hits if score >= hits[0][1] - 1e-5]


def test_audit_before_and_after_match_the_catalog(lake, catalog, materialized):
    crawl_rows = sum(pq.read_metadata(materialized["crawl"] / f"{s}.parquet").num_rows for s in SHARD_NAMES)
    for policy in POLICIES:
        metrics = lake.read_json(f"audits/{policy}/metrics.json")
        pool = catalog.query("SELECT punsafe, pwatermark FROM scores").to_pylist()
        members = catalog.query(
            "SELECT s.punsafe FROM scores s JOIN subset_members m USING (shard, key) WHERE m.policy = ?",
            [policy]).to_pylist()
        assert metrics["before"]["samples"] == len(pool)
        assert metrics["after"]["samples"] == len(members)
        assert metrics["before"]["nsfw_rate"] == pytest.approx(np.mean([r["punsafe"] > 0.5 for r in pool]))
        assert metrics["after"]["nsfw_rate"] == pytest.approx(np.mean([r["punsafe"] > 0.5 for r in members]))
        assert metrics["before"]["watermark_rate"] == pytest.approx(np.mean([r["pwatermark"] > 0.8 for r in pool]))
        assert sum(metrics["languages"]["before"].values()) == pytest.approx(1.0)
        assert metrics["crawl"]["crawl_rows"] == crawl_rows
        assert metrics["crawl"]["failed_download"] > 0 and metrics["crawl"]["corrupt_image"] > 0


def test_query_counts_equal_crawl_parquet_rows(materialized):
    crawl_rows = sum(pq.read_metadata(materialized["crawl"] / f"{s}.parquet").num_rows for s in SHARD_NAMES)
    out = run_cli("query", "--lake", str(materialized["lake"]),
                  "SELECT count(*) AS n, count(*) FILTER (WHERE status <> 'success') AS failed FROM samples")
    header, values = out.stdout.strip().splitlines()
    assert header == "n,failed"
    assert int(values.split(",")[0]) == crawl_rows and int(values.split(",")[1]) > 0
    out = run_cli("query", "--lake", str(materialized["lake"]), "--json",
                  "SELECT shard, count(*) AS n FROM samples GROUP BY shard ORDER BY shard")
    rows = json.loads(out.stdout)
    assert rows == [{"shard": s, "n": crawl_rows // SHARDS} for s in SHARD_NAMES]


def test_a_second_run_does_no_per_shard_work(materialized):
    assert f"with per-shard work: {SHARDS}" in materialized["output"]
    again = run_cli("materialize", "--crawl", str(materialized["crawl"]), "--lake", str(materialized["lake"]),
                    env=materialized["env"])
    assert "with per-shard work: 0;" in again.stdout
    assert "cross-shard assets: 0;" in again.stdout


def test_a_rewrite_of_a_shards_embeddings_never_hides_it_from_readers(lake, tmp_path):
    """Arrays go into a version folder and keys.parquet commits them: a killed rewrite leaves
    the old embeddings whole, and readers during rewrites always find the shard, consistent."""
    import shutil
    import threading

    from resources.catalog import open_catalog
    from resources.embedding_files import ShardEmbeddings, write_embeddings
    from resources.lake import LakeResource

    copy = tmp_path / "lake"
    shutil.copytree(lake.url, copy, ignore=shutil.ignore_patterns("_dagster"))
    store = LakeResource(root=str(copy))
    shard = SHARD_NAMES[0]
    keys, image, text = load_embeddings(store, shard, MODEL_ID)
    n = keys.num_rows
    folder = embeddings_dir(shard, MODEL_ID)
    store.write_npy(f"{folder}/versions/killedrewrite/img_emb.npy", image[:3].astype(np.float16))  # no commit
    again, image_again, _ = load_embeddings(store, shard, MODEL_ID)
    assert again.equals(keys) and np.array_equal(image_again, image)

    flipped = ShardEmbeddings(keys.column("key").to_pylist(), (-image).astype(np.float16), text.astype(np.float16), [])
    original = ShardEmbeddings(keys.column("key").to_pylist(), image.astype(np.float16), text.astype(np.float16), [])
    errors: list[BaseException] = []

    def rewrite() -> None:
        try:
            for i in range(12):
                write_embeddings(store, shard, MODEL_ID, flipped if i % 2 else original)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    writer = threading.Thread(target=rewrite)
    writer.start()
    seen = 0
    while writer.is_alive() or seen < 5:
        catalog = open_catalog(store.url, MODEL_ID)
        try:
            count = catalog.query(f"SELECT count(*) AS n FROM embeddings_index WHERE shard = '{shard}'")
        finally:
            catalog.close()
        assert count.column("n")[0].as_py() == n
        read_keys, read_image, _ = load_embeddings(store, shard, MODEL_ID)
        assert read_keys.num_rows == len(read_image) == n
        assert abs(float((read_image * image).sum(1).mean())) == pytest.approx(1.0, abs=1e-2)  # one version whole
        seen += 1
    writer.join()
    assert not errors and seen >= 5
    assert len(list((copy / folder / "versions").iterdir())) <= 2  # older versions are removed
