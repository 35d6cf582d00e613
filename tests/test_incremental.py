"""New and rewritten shards recompute alone; the sensor sees both."""

import json
import shutil

from dagster import DagsterInstance, build_sensor_context

from assets import checks
from assets.sample_crawl import write_sample_crawl
from orchestration.definitions import build_definitions, defs
from orchestration.runner import run_pipeline
from orchestration.sensors import build_crawl_sensor
from resources.crawl import CrawlResource

PER_SHARD = {"samples", "embeddings", "scores/clip_similarity", "scores/nsfw", "scores/watermark",
             "scores/aesthetic", "scores/language", "scores/quality", "scores/exact_hash", "scores/toxicity",
             "scores/concepts"}


def _copy_shard(source, target, shard: str) -> None:
    for suffix in (".tar", ".parquet", "_stats.json"):
        shutil.copy(source / f"{shard}{suffix}", target / f"{shard}{suffix}")


def test_only_new_and_rewritten_shards_recompute(tmp_path, monkeypatch):
    # Tiny crawls hold a duplicate share that the default checks would (rightly) block.
    (tmp_path / "checks.toml").write_text("[default]\n")
    monkeypatch.setattr(checks, "CHECKS_PATH", tmp_path / "checks.toml")
    crawl, other = tmp_path / "crawl", tmp_path / "other"
    write_sample_crawl(crawl, shards=2, samples_per_shard=60, seed=5)
    write_sample_crawl(other, shards=3, samples_per_shard=60, seed=6)
    (crawl / "ground_truth.parquet").unlink()  # a real crawl has none: no evaluation asset
    definitions = build_definitions(crawl=str(crawl), lake=str(tmp_path / "lake"))
    with DagsterInstance.ephemeral() as instance:
        first = run_pipeline(definitions, instance, log=lambda _: None)
        assert set(first.per_shard_runs) == {"00000", "00001"}
        assert set(first.per_shard_runs["00000"]) == PER_SHARD

        _copy_shard(other, crawl, "00002")  # a new shard lands
        second = run_pipeline(definitions, instance, log=lambda _: None)
        assert set(second.per_shard_runs) == {"00002"} and set(second.per_shard_runs["00002"]) == PER_SHARD
        assert "subsets/safe" in second.cross_shard_assets

        _copy_shard(other, crawl, "00001")  # shard 00001 rewritten under the same name
        third = run_pipeline(definitions, instance, log=lambda _: None)
        assert set(third.per_shard_runs) == {"00001"} and set(third.per_shard_runs["00001"]) == PER_SHARD

        quiet = run_pipeline(definitions, instance, log=lambda _: None)
        assert quiet.per_shard_runs == {} and quiet.cross_shard_assets == []


def test_sensor_requests_new_and_rewritten_shards(tmp_path):
    crawl, other = tmp_path / "crawl", tmp_path / "other"
    write_sample_crawl(crawl, shards=1, samples_per_shard=60, seed=5)
    write_sample_crawl(other, shards=2, samples_per_shard=60, seed=6)
    sensor = build_crawl_sensor(defs.resolve_job_def("per_shard"))
    resources = {"crawl": CrawlResource(root=str(crawl))}
    with DagsterInstance.ephemeral() as instance:
        first = sensor(build_sensor_context(instance=instance, resources=resources))
        assert [r.partition_key for r in first.run_requests] == ["00000"]
        instance.add_dynamic_partitions("shards", ["00000"])
        cursor = first.cursor
        idle = sensor(build_sensor_context(instance=instance, resources=resources, cursor=cursor))
        assert idle.run_requests == []

        _copy_shard(other, crawl, "00000")
        _copy_shard(other, crawl, "00001")
        later = sensor(build_sensor_context(instance=instance, resources=resources, cursor=idle.cursor))
        assert sorted(r.partition_key for r in later.run_requests) == ["00000", "00001"]
        assert json.loads(later.cursor)["00000"] != json.loads(cursor)["00000"]


def test_the_whole_pipeline_runs_on_an_fsspec_url_lake(tmp_path, monkeypatch):
    """memory:// goes through the same fsspec code path as s3://, DuckDB included."""
    import fsspec

    (tmp_path / "checks.toml").write_text("[default]\n")
    monkeypatch.setattr(checks, "CHECKS_PATH", tmp_path / "checks.toml")
    write_sample_crawl(tmp_path / "crawl", shards=1, samples_per_shard=60, seed=3)
    root = f"memory://lake-{tmp_path.name}"
    definitions = build_definitions(crawl=str(tmp_path / "crawl"), lake=root)
    with DagsterInstance.ephemeral() as instance:
        first = run_pipeline(definitions, instance, log=lambda _: None)
        assert set(first.per_shard_runs) == {"00000"} and "evaluation" in first.cross_shard_assets
        assert run_pipeline(definitions, instance, log=lambda _: None).per_shard_runs == {}
    files = fsspec.filesystem("memory").find(f"/lake-{tmp_path.name}")
    assert any(f.endswith("shards/00000/samples.parquet") for f in files)
    assert any("/indices/safe/" in f and f.endswith("image.index") for f in files)
    assert any(f.endswith("audits/safe/report.html") for f in files)
