"""The code location: asset graph, versions that follow the model, policies from files, the sensor."""

import json
import os
import subprocess
import sys

import pytest
from dagster import AssetKey, DagsterInstance, build_sensor_context, materialize

from assets.definitions.crawl_shard import crawl_shard
from assets.definitions.partitions import shard_batches
from assets.definitions.samples import build_samples_asset
from assets.demo.sample_crawl import write_sample_crawl
from orchestration.definitions import build_assets, defs, per_shard_keys
from orchestration.sensors import build_crawl_sensor
from resources.clip_model import ClipModelResource
from resources.crawl import CrawlResource
from resources.heads import HeadsResource
from resources.lake import LakeResource
from tests.conftest import REPO, SAMPLES_PER_SHARD

PER_SHARD = ["samples", "embeddings", "scores/clip_similarity", "scores/nsfw", "scores/watermark",
             "scores/aesthetic", "scores/language", "scores/quality", "scores/image_hashes", "scores/toxicity",
             "scores/caption_terms", "scores/text_in_image", "caption_candidates", "preference_pairs",
             "dedup_assignment"]


def test_graph_has_every_stage_with_shard_partitions():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {k.to_user_string() for k in per_shard_keys(defs)} == set(PER_SHARD)  # what every other test derives
    assert {k.to_user_string() for k in per_shard_keys(defs, with_flyt=True)} - set(PER_SHARD) == {
        "scores/flyt", "scores/mflyt"}
    for policy in ("laion400m", "laion2b_en", "datacomp_basic", "datacomp_clip_top30", "metaclip_balanced", "safe"):
        assert {f"{policy}_subset", f"{policy}_index", f"{policy}_audit"} <= keys
    assert {"dedup_centroids", "near_duplicates", "evaluation"} <= keys
    for name in PER_SHARD:
        node = graph.get(AssetKey.from_user_string(name))
        assert node.partitions_def.name == "shards" and node.code_version
    assert graph.get(AssetKey("laion400m_subset")).partitions_def is None


def test_model_id_is_in_the_versions_of_everything_below_embeddings():
    demo = {a.key.to_user_string(): a for a in build_assets(ClipModelResource(), HeadsResource())
            if hasattr(a, "code_versions_by_key")}
    other_clip = ClipModelResource(model_name="ViT-B-32", pretrained="laion2b_s34b_b79k")
    other = {a.key.to_user_string(): a for a in build_assets(other_clip, HeadsResource())
             if hasattr(a, "code_versions_by_key")}
    changed = {k for k in demo if demo[k].code_versions_by_key[demo[k].key] != other[k].code_versions_by_key[
        other[k].key]}
    assert "ViT-B-32__laion2b_s34b_b79k" in other["embeddings"].code_versions_by_key[AssetKey("embeddings")]
    assert {"embeddings", "scores/clip_similarity", "scores/nsfw", "scores/watermark", "scores/aesthetic",
            "dedup_centroids", "dedup_assignment", "near_duplicates", "laion400m_subset", "laion400m_index",
            "laion400m_audit", "evaluation"} <= changed
    assert not changed & {"samples", "scores/language", "scores/quality", "scores/image_hashes", "scores/toxicity",
                          "scores/caption_terms"}


def test_a_new_policy_file_is_a_new_subset_index_and_audit(tmp_path):
    (tmp_path / "strict.sql").write_text(
        "SET VARIABLE min_similarity = 0.9;\n"
        "SELECT key, shard FROM scores WHERE similarity >= getvariable('min_similarity');\n")
    code = ("import json; from orchestration.definitions import defs; "
            "print(json.dumps(sorted(k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys())))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={**os.environ, "CLIPSIEVE_POLICY_DIR": str(tmp_path)})
    keys = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert {"strict_subset", "strict_index", "strict_audit"} <= keys
    assert "laion400m_subset" not in keys


def test_workspace_loads_in_dagster():
    result = subprocess.run([str(REPO / ".venv" / "bin" / "dagster"), "definitions", "validate", "-w",
                             "workspace.yaml"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_sensor_registers_complete_shards_only(tmp_path):
    write_sample_crawl(tmp_path, shards=2, samples_per_shard=60, seed=1)
    (tmp_path / "00001_stats.json").unlink()  # shard 00001 still being written
    sensor = build_crawl_sensor(defs.resolve_job_def("observe_crawl"), defs.resolve_job_def("cross_shard"))
    with DagsterInstance.ephemeral() as instance:
        context = build_sensor_context(instance=instance, resources={
            "crawl": CrawlResource(root=str(tmp_path)), "lake": LakeResource(root=str(tmp_path / "lake"))})
        result = sensor(context)
        assert [r.job_name for r in result.run_requests] == ["observe_crawl"]
        assert result.dynamic_partitions_requests[0].partition_keys == ["00000"]


def test_one_asset_for_one_partition_as_the_ui_launches_it(tmp_path, crawl):
    resources = {"crawl": CrawlResource(root=str(crawl)), "lake": LakeResource(root=str(tmp_path))}
    samples = build_samples_asset(shard_batches())
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("shards", ["00001"])
        result = materialize([samples, crawl_shard], instance=instance, partition_key="00001",
                             resources=resources, selection=[samples])
        assert result.success
        (event,) = result.get_asset_materialization_events()
        assert event.partition == "00001"
        metadata = event.materialization.metadata
        assert metadata["rows"].value == SAMPLES_PER_SHARD
        assert metadata["image_status/failed_to_download"].value > 0
    written = LakeResource(root=str(tmp_path)).read_parquet("shards/00001/samples.parquet")
    assert written.num_rows == SAMPLES_PER_SHARD and set(written.column("shard").to_pylist()) == {"00001"}


def test_refresh_schedule_and_automation_are_defined():
    schedule = defs.resolve_schedule_def("refresh_schedule")
    assert schedule.cron_schedule == "0 * * * *" and schedule.job_name == "cross_shard"
    graph = defs.resolve_asset_graph()
    labels = {k.to_user_string(): graph.get(k).automation_condition.get_label()
              for k in graph.get_all_asset_keys() if graph.get(k).automation_condition is not None}
    eager = "eager, or a new code version"
    assert labels["samples"] == labels["embeddings"] == labels["scores/toxicity"] == eager
    cron = "on the refresh cron or a new code version, blocking checks passed"
    assert labels["safe_subset"] == labels["safe_index"] == cron
    assert "sample_crawl" not in labels and "crawl_shard" not in labels
    # FLYT trains a model: its pool-wide assets refresh only once materialized, and no job the
    # schedule or the crawl sensor runs holds them.
    assert labels["flyt_scorer"] == labels["flyt_scs_subset"] == f"{cron}, once materialized"
    assert labels["scores/flyt"] == "eager on its shard, or a new flyt_scorer"
    cross_shard = set(defs.resolve_job_def("cross_shard").asset_layer.executable_asset_keys)
    learned = set(defs.resolve_job_def("flyt").asset_layer.executable_asset_keys)
    assert {k.to_user_string() for k in learned} == {"flyt_scorer", "flyt_mix"} | {
        f"{p}_{a}" for p in ("flyt_scs", "mflyt_scs") for a in ("subset", "index", "audit")}
    assert not cross_shard & learned and {AssetKey(["scores", "flyt"]), AssetKey(["scores", "mflyt"])} <= set(
        defs.resolve_job_def("per_shard").asset_layer.executable_asset_keys)
    # The downstream proxy trains a model per subset: its own job, refreshed only once materialized.
    assert set(defs.resolve_job_def("proxy").asset_layer.executable_asset_keys) == {AssetKey("downstream_proxy")}
    assert labels["downstream_proxy"] == f"{cron}, once materialized"


def test_the_command_exits_directly_with_its_output_whole_and_its_exit_code(tmp_path):
    """entry_point skips the interpreter's teardown: what was printed must still all arrive,
    and a refused command must still exit 1 with its message."""
    command = [sys.executable, "-m", "orchestration.cli", "query", "--lake", str(tmp_path), "--json"]
    listed = subprocess.run([*command, "SELECT range AS n FROM range(50000)"], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    assert [row["n"] for row in json.loads(listed.stdout)] == list(range(50000))
    refused = subprocess.run([*command, "DROP TABLE x"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1 and refused.stderr.startswith("clipsieve: query refused")


def test_on_ray_every_step_asks_for_a_cpu_and_the_embeddings_step_for_a_gpu():
    """CLIPSIEVE_EXECUTOR=ray: both jobs run their steps with dagster-ray's executor, and each
    op's tag says what Ray must give its step (tests/test_cluster.py runs it on a cluster)."""
    from orchestration.definitions import build_definitions
    from orchestration.execution import step_executor

    ray_defs = build_definitions(embedding_gpus=1, executor=step_executor("ray", "http://127.0.0.1:8265"))
    for job in ("per_shard", "cross_shard", "flyt"):
        assert ray_defs.resolve_job_def(job).executor_def.name == "ray_steps"
    graph = ray_defs.resolve_asset_graph()
    wanted = {key.to_user_string(): json.loads(graph.get(key).assets_def.op.tags["dagster-ray/config"])
              for key in graph.materializable_asset_keys}
    assert wanted.pop("embeddings") == {"num_cpus": 1, "num_gpus": 1}
    assert wanted and all(tag == {"num_cpus": 1} for tag in wanted.values()), wanted
    # In process (the default), the same tags are there and nothing reads them.
    assert defs.resolve_job_def("per_shard").executor_def.name == "in_process"
    with pytest.raises(ValueError, match="CLIPSIEVE_RAY_ADDRESS"):
        step_executor("ray", None)


def test_every_setting_the_code_reads_goes_with_a_step_to_ray():
    """A Ray step loads the code location from the variables its run passes on
    (orchestration/execution.py): a CLIPSIEVE_* variable read anywhere but missing there
    would give the step other definitions than the run's."""
    import re

    from orchestration.execution import LOCATION_VARIABLES

    read = {name for folder in ("orchestration", "assets", "resources") for path in (REPO / folder).rglob("*.py")
            for name in re.findall(r"CLIPSIEVE_[A-Z_]+", path.read_text())}
    local = {"CLIPSIEVE_CACHE_DIR"}  # a machine's own cache folder
    assert read - local <= set(LOCATION_VARIABLES), sorted(read - local - set(LOCATION_VARIABLES))
