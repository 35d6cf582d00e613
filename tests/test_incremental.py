"""New and rewritten shards recompute alone; the sensor sees both."""

import shutil

import numpy as np
import pyarrow as pa
from dagster import (
    AssetKey,
    AssetSelection,
    DagsterInstance,
    DeleteDynamicPartitionsRequest,
    build_sensor_context,
    evaluate_automation_conditions,
)

from assets.demo.sample_crawl import write_sample_crawl
from assets.index_vectors import ArrayVectors
from assets.indices import build_index, update_index
from orchestration.definitions import defs, per_shard_keys
from orchestration.runner import SHARDS_TAG, shard_batches
from orchestration.sensors import build_crawl_sensor
from resources.clip_model import ClipModelResource
from resources.crawl import CrawlResource
from resources.indexing import IndexSettings
from resources.lake import LakeResource, index_dir
from tests.conftest import pipeline

PER_SHARD = {key.to_user_string() for key in per_shard_keys(defs)}


def _index_info(lake: LakeResource, policy: str) -> dict:
    return lake.read_json(f"{index_dir(policy, ClipModelResource().model_id)}/index_info.json")


def _copy_shard(source, target, shard: str) -> None:
    for suffix in (".tar", ".parquet", "_stats.json"):
        shutil.copy(source / f"{shard}{suffix}", target / f"{shard}{suffix}")


def test_only_new_and_rewritten_shards_recompute(tmp_path):
    # Tiny crawls hold a duplicate share that the default checks would (rightly) block.
    (tmp_path / "checks.toml").write_text("[default]\n")
    crawl, other = tmp_path / "crawl", tmp_path / "other"
    write_sample_crawl(crawl, shards=2, samples_per_shard=60, seed=5)
    write_sample_crawl(other, shards=3, samples_per_shard=60, seed=6)
    (crawl / "ground_truth.parquet").unlink()  # a real crawl has none: no evaluation asset
    lake = LakeResource(root=str(tmp_path / "lake"))
    with pipeline(tmp_path / "home", crawl=crawl, lake=lake.root, checks=tmp_path / "checks.toml") as run:
        instance, definitions = run.instance, run.defs
        first = run.run()
        assert set(first.per_shard_runs) == {"00000", "00001"}
        assert set(first.per_shard_runs["00000"]) == PER_SHARD
        # Both shards needed the same work: one run over the partition range per per-shard stage
        # (the near-duplicate assignment follows the pool's centroids), one per partition
        # materialization of each asset.
        assert [r.tags.get(SHARDS_TAG) for r in instance.get_runs() if SHARDS_TAG in r.tags] == ["00000,00001"] * 2
        assert instance.get_materialized_partitions(AssetKey("embeddings")) == {"00000", "00001"}

        _copy_shard(other, crawl, "00002")  # a new shard lands
        second = run.run()
        assert set(second.per_shard_runs) == {"00002"} and set(second.per_shard_runs["00002"]) == PER_SHARD
        assert "safe_subset" in second.cross_shard_assets
        # A per-sample filter keeps its old members: the index grows by the new shard's.
        grown = _index_info(lake, "laion400m")
        assert grown["build_mode"] == "grown" and grown["added"] > 0 and grown["recall_at_10"] == 1.0
        assert grown["count"] == len(lake.read_parquet("subsets/laion400m/members.parquet"))

        # Dagster agrees, by its own conditions: nothing to do now; once the crawl sensor sees
        # shard 00001 rewritten and its observation runs, automation asks for exactly that
        # shard's per-shard assets.
        sensor = build_crawl_sensor(definitions.resolve_job_def("observe_crawl"),
                                    definitions.resolve_job_def("cross_shard"))
        resources = {"crawl": CrawlResource(root=str(crawl)), "lake": lake}
        tick = sensor(build_sensor_context(instance=instance, resources=resources))
        per_shard = AssetSelection.keys(*[AssetKey.from_user_string(k) for k in PER_SHARD])
        settled = evaluate_automation_conditions(definitions, instance, asset_selection=per_shard)
        settled = evaluate_automation_conditions(definitions, instance, asset_selection=per_shard,
                                                 cursor=settled.cursor)
        assert settled.total_requested == 0
        _copy_shard(other, crawl, "00001")  # shard 00001 rewritten under the same name
        tick = sensor(build_sensor_context(instance=instance, resources=resources, cursor=tick.cursor))
        assert [r.job_name for r in tick.run_requests] == ["observe_crawl"]
        definitions.resolve_job_def("observe_crawl").execute_in_process(instance=instance)
        # The UI's stale badges: the rewritten shard's samples only (Dagster marks the direct
        # dependants of a change; what is below follows once samples is redone).
        statuses = run.server.stale_by_partition([k.split("/") for k in PER_SHARD], ["00000", "00001", "00002"])
        assert {key for key, status in statuses.items() if status != "FRESH"} == {("samples", "00001")}
        wanted = evaluate_automation_conditions(definitions, instance, asset_selection=per_shard,
                                                cursor=settled.cursor)
        requested = {key: wanted.get_requested_partitions(AssetKey.from_user_string(key)) for key in PER_SHARD}
        assert requested == {key: {"00001"} for key in PER_SHARD}
        third = run.run()
        assert set(third.per_shard_runs) == {"00001"} and set(third.per_shard_runs["00001"]) == PER_SHARD
        asked_for = ("crawl", "evaluation", "flyt", "proxy")  # flyt and proxy: only with --flyt or the UI
        cross_shard = {spec.key.to_user_string() for spec in definitions.resolve_all_asset_specs()
                       if spec.partitions_def is None and spec.group_name not in asked_for}
        assert set(third.cross_shard_assets) == cross_shard
        assert _index_info(lake, "laion400m")["build_mode"] == "rebuilt"

        quiet = run.run()
        assert quiet.per_shard_runs == {} and quiet.cross_shard_assets == []


def test_shards_needing_the_same_work_share_a_run_in_partition_order():
    a, b = {AssetKey("samples"), AssetKey("embeddings")}, {AssetKey("embeddings")}
    order = ["00003", "00000", "00001", "00002", "00004", "00005", "00006"]
    work = {"00003": a, "00000": a, "00001": a, "00002": b, "00005": b, "00006": b}
    assert shard_batches(order, work, size=2) == [
        (["00003", "00000"], a),  # neighbours in the instance's order, not in name order
        (["00001"], a),  # the size cap
        (["00002"], b),  # 00004 has nothing to do and would sit inside a range 00002..00005
        (["00005", "00006"], b),
    ]
    assert shard_batches(order, {}, size=16) == []


def test_sensor_registers_new_shards_observes_changes_and_retires_deleted_ones(tmp_path):
    crawl, other, lake = tmp_path / "crawl", tmp_path / "other", tmp_path / "lake"
    write_sample_crawl(crawl, shards=1, samples_per_shard=60, seed=5)
    write_sample_crawl(other, shards=2, samples_per_shard=60, seed=6)
    sensor = build_crawl_sensor(defs.resolve_job_def("observe_crawl"), defs.resolve_job_def("cross_shard"))
    resources = {"crawl": CrawlResource(root=str(crawl)), "lake": LakeResource(root=str(lake))}
    with DagsterInstance.ephemeral() as instance:
        first = sensor(build_sensor_context(instance=instance, resources=resources))
        assert first.dynamic_partitions_requests[0].partition_keys == ["00000"]
        assert [r.job_name for r in first.run_requests] == ["observe_crawl"]
        instance.add_dynamic_partitions("shards", ["00000"])
        idle = sensor(build_sensor_context(instance=instance, resources=resources, cursor=first.cursor))
        assert idle.run_requests == [] and idle.dynamic_partitions_requests == []

        _copy_shard(other, crawl, "00000")  # rewritten: observed again (no new partition)
        changed = sensor(build_sensor_context(instance=instance, resources=resources, cursor=idle.cursor))
        assert [r.job_name for r in changed.run_requests] == ["observe_crawl"]
        assert changed.dynamic_partitions_requests == [] and changed.cursor != idle.cursor
        _copy_shard(other, crawl, "00001")  # new: a partition, and observed
        later = sensor(build_sensor_context(instance=instance, resources=resources, cursor=changed.cursor))
        assert later.dynamic_partitions_requests[0].partition_keys == ["00001"]
        assert [r.job_name for r in later.run_requests] == ["observe_crawl"]

        # Shard 00001 leaves the crawl: its partition goes, its lake files retire, and the
        # cross-shard assets run again without it. A shard only half-rewritten stays.
        instance.add_dynamic_partitions("shards", ["00001"])
        (lake / "shards/00001/scores").mkdir(parents=True)
        (lake / "shards/00001/samples.parquet").write_bytes(b"")
        for suffix in (".tar", ".parquet", "_stats.json"):
            (crawl / f"00001{suffix}").unlink()
        (crawl / "00000_stats.json").unlink()
        gone = sensor(build_sensor_context(instance=instance, resources=resources, cursor=later.cursor))
        (request,) = gone.run_requests
        assert request.job_name == "cross_shard" and request.tags["clipsieve/removed_shards"] == "00001"
        (delete,) = [r for r in gone.dynamic_partitions_requests if isinstance(r, DeleteDynamicPartitionsRequest)]
        assert delete.partition_keys == ["00001"]
        assert not (lake / "shards/00001").exists() and (lake / "retired/shards/00001/samples.parquet").exists()


def test_the_whole_pipeline_runs_on_an_fsspec_url_lake(tmp_path):
    """memory:// goes through the same fsspec code path as s3://, DuckDB included."""
    import fsspec

    (tmp_path / "checks.toml").write_text("[default]\n")
    write_sample_crawl(tmp_path / "crawl", shards=1, samples_per_shard=60, seed=3)
    root = f"memory://lake-{tmp_path.name}"
    with pipeline(tmp_path / "home", crawl=tmp_path / "crawl", lake=root, checks=tmp_path / "checks.toml") as run:
        first = run.run()
        assert set(first.per_shard_runs) == {"00000"} and "evaluation" in first.cross_shard_assets
        assert run.run().per_shard_runs == {}
    files = fsspec.filesystem("memory").find(f"/lake-{tmp_path.name}")
    assert any(f.endswith("shards/00000/samples.parquet") for f in files)
    assert any("/indices/safe/" in f and f.endswith("image.index") for f in files)
    assert any(f.endswith("audits/safe/report.html") for f in files)


def test_an_ivf_index_is_rebuilt_when_new_vectors_drift():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((50, 32)).astype(np.float32)

    def unit(x):
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    old = unit(centres[rng.integers(0, 50, 25_000)] + 0.1 * rng.standard_normal((25_000, 32)))
    settings = IndexSettings(4 * 2**20, 0.5, 100)
    old_keys = pa.table({"key": [f"a{i}" for i in range(len(old))], "shard": ["0"] * len(old)})
    index, info = build_index(old, old[:100], settings)
    assert info["factory"].startswith("IVF") and info["centroid_similarity"] > 0.8

    near = unit(centres[rng.integers(0, 50, 500)] + 0.1 * rng.standard_normal((500, 32)))
    keys = pa.concat_tables([old_keys, pa.table({"key": [f"b{i}" for i in range(500)], "shard": ["1"] * 500})])
    grown_index, grown_keys, grown = update_index((index, old_keys, info),
                                                  ArrayVectors(np.concatenate([old, near]), keys), old[:100], settings)
    assert grown["build_mode"] == "grown" and grown_index.ntotal == 25_500 and grown_keys.num_rows == 25_500

    far = unit(rng.standard_normal((500, 32)))  # no cluster structure: far from every centroid
    _, _, rebuilt = update_index((grown_index, grown_keys, grown), ArrayVectors(
        np.concatenate([old, near, far]), pa.concat_tables([grown_keys, pa.table({
            "key": [f"c{i}" for i in range(500)], "shard": ["2"] * 500})])), old[:100], settings)
    assert rebuilt["build_mode"] == "rebuilt" and rebuilt["rebuild_reason"].startswith("drift")


def test_an_index_is_rebuilt_when_a_members_shard_changed():
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((100, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    keys = pa.table({"key": [f"k{i}" for i in range(100)], "shard": ["00000"] * 100})
    index, info = build_index(vectors, vectors[:10])
    info["shard_versions"] = {"00000": "v1"}
    same = update_index((index, keys, info), ArrayVectors(vectors, keys), vectors[:10],
                        shard_versions={"00000": "v1"})[2]
    assert same["build_mode"] == "grown" and same["added"] == 0
    # Same keys, but the shard was rewritten: its vectors in the index are stale.
    changed = update_index((index, keys, info), ArrayVectors(vectors, keys), vectors[:10],
                           shard_versions={"00000": "v2"})[2]
    assert changed["build_mode"] == "rebuilt" and "00000" in changed["rebuild_reason"]


def test_one_run_can_handle_a_batch_of_shards(tmp_path):
    """A backfill under the BackfillPolicy runs a range of shards in one run; the runner
    then sees each of them as done."""
    from dagster import AssetSelection, materialize

    (tmp_path / "checks.toml").write_text("[default]\n")
    write_sample_crawl(tmp_path / "crawl", shards=3, samples_per_shard=40, seed=8)
    lake = LakeResource(root=str(tmp_path / "lake"))
    with pipeline(tmp_path / "home", crawl=tmp_path / "crawl", lake=lake.root, checks=tmp_path / "checks.toml") as run:
        instance, definitions = run.instance, run.defs
        instance.add_dynamic_partitions("shards", ["00000", "00001", "00002"])
        result = materialize(list(definitions.assets), instance=instance, resources=definitions.resources,
                             selection=AssetSelection.groups("per_shard", "scores", "preference"),
                             tags={"dagster/asset_partition_range_start": "00000",
                                   "dagster/asset_partition_range_end": "00002"})
        assert result.success
        partitions = {e.partition for e in result.get_asset_materialization_events()
                      if e.asset_key.to_user_string() == "embeddings"}
        assert partitions == {"00000", "00001", "00002"}  # one run, three shards
        for shard in ("00000", "00001", "00002"):
            assert lake.exists(f"shards/{shard}/scores/toxicity.parquet")
        report = run.run()
        # Only what lies below the pool's near-duplicate centroids is left per shard.
        assert report.per_shard_runs == {shard: ["dedup_assignment"] for shard in ("00000", "00001", "00002")}
        assert "safe_subset" in report.cross_shard_assets
