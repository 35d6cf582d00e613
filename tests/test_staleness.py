"""A model change or a policy change makes exactly the dependent assets stale, as the
Dagster UI shows it: the UI's own GraphQL query (`staleStatus` of each asset node), asked of
a Dagster webserver over the instance and a code location built with the test's settings."""

import shutil

import pytest
from safetensors.torch import load_file, save_file

from assets.demo.sample_crawl import write_sample_crawl
from orchestration.dagster_server import DagsterServer
from orchestration.definitions import build_definitions, location_env
from resources.clip_model import DEMO_CHECKPOINT, DEMO_DIR, DEMO_MODEL
from tests.conftest import pipeline

SHARD = "00000"
PER_SHARD_MODEL = ["embeddings", "scores/clip_similarity", "scores/nsfw", "scores/watermark", "scores/aesthetic",
                   "scores/text_in_image", "caption_candidates", "preference_pairs", "dedup_assignment"]
PER_SHARD_TEXT = ["samples", "scores/language", "scores/quality", "scores/image_hashes", "scores/toxicity",
                  "scores/caption_terms"]
POLICIES = ["laion400m", "laion2b_en", "datacomp_basic", "datacomp_clip_top30", "metaclip_balanced", "safe",
            "similarity_scs"]  # flyt_scs and mflyt_scs are in the flyt group: never materialized here


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One small shard materialized with the demo model, in an instance folder of its own."""
    root = tmp_path_factory.mktemp("staleness")
    (root / "checks.toml").write_text("[default]\n")  # a 60-row crawl would trip the duplicate bounds
    write_sample_crawl(root / "crawl", shards=1, samples_per_shard=60, seed=11)
    (root / "crawl" / "ground_truth.parquet").unlink()
    paths = {"crawl": root / "crawl", "lake": root / "lake", "checks": root / "checks.toml"}
    with pipeline(root / "dagster_home", **paths) as run:
        run.run()
    yield {"root": root, "paths": paths, "home": root / "dagster_home"}


def _statuses(world: dict, **settings) -> dict[str, str]:
    """Asset key -> the UI's stale status (of the shard's partition for per-shard assets)."""
    settings = {**world["paths"], **settings}
    specs = [spec for spec in build_definitions(**settings).resolve_all_asset_specs()
             if spec.group_name not in ("evaluation", "crawl", "flyt", "proxy")]  # flyt, proxy: only when asked
    with DagsterServer(str(world["home"]), location_env(**settings), log=lambda _: None) as server:
        statuses = {key: status for (key, _), status in server.stale_by_partition(
            [spec.key.path for spec in specs if spec.partitions_def is not None], [SHARD]).items()}
        statuses.update(server.stale([spec.key.path for spec in specs if spec.partitions_def is None]))
    assert len(statuses) == len(specs)
    return statuses


def test_nothing_is_stale_after_a_full_run(world):
    statuses = _statuses(world)
    assert set(statuses.values()) == {"FRESH"}, statuses


def _other_model(world: dict) -> dict:
    """Settings for the demo model's weights saved again with other metadata: other bytes,
    so another model id."""
    other = world["root"] / "other_model"
    if not other.exists():
        other.mkdir()
        shutil.copy(DEMO_DIR / f"{DEMO_MODEL}.json", other)
        save_file(load_file(DEMO_CHECKPOINT), str(other / f"{DEMO_MODEL}.safetensors"), metadata={"variant": "b"})
    return {"model_name": DEMO_MODEL, "pretrained": other / f"{DEMO_MODEL}.safetensors"}


MODEL_CROSS_SHARD = {"dedup_centroids", "near_duplicates"} | {f"{p}_{kind}" for kind in ("subset", "index", "audit")
                                                              for p in POLICIES}


def test_a_new_model_makes_embeddings_and_everything_below_stale(world):
    statuses = _statuses(world, **_other_model(world))
    stale = {k for k, v in statuses.items() if v == "STALE"}
    assert stale == set(PER_SHARD_MODEL) | MODEL_CROSS_SHARD
    assert all(statuses[k] == "FRESH" for k in PER_SHARD_TEXT)


def test_a_changed_policy_makes_only_its_subset_index_and_audit_stale_and_materialize_redoes_them(world):
    policies = world["root"] / "policies"
    shutil.copytree(DEMO_DIR.parents[1] / "sql" / "policies", policies)
    sql = (policies / "laion400m.sql").read_text()
    (policies / "laion400m.sql").write_text(sql.replace("max_punsafe = 0.5", "max_punsafe = 0.4"))
    statuses = _statuses(world, policy_dir=policies)
    # Dagster marks only the direct dependants of a change stale; materialize redoes what is below them too.
    assert {k for k, v in statuses.items() if v == "STALE"} == {"laion400m_subset"}
    with pipeline(world["home"], policy_dir=policies, **world["paths"]) as run:
        report = run.run()
    assert report.per_shard_runs == {}
    assert set(report.cross_shard_assets) == {"laion400m_subset", "laion400m_index", "laion400m_audit"}
    assert set(_statuses(world, policy_dir=policies).values()) == {"FRESH"}


def test_materialize_after_a_model_change_redoes_exactly_what_the_model_feeds(world):
    with pipeline(world["home"], **world["paths"], **_other_model(world)) as run:
        report = run.run()
    assert report.per_shard_runs == {SHARD: sorted(PER_SHARD_MODEL)}
    assert set(report.cross_shard_assets) == MODEL_CROSS_SHARD
    assert set(_statuses(world, **_other_model(world)).values()) == {"FRESH"}


def test_a_large_files_digest_is_kept_across_processes_until_the_file_changes(tmp_path, monkeypatch):
    import hashlib
    import json
    import os

    from resources import versions

    monkeypatch.setenv("CLIPSIEVE_CACHE_DIR", str(tmp_path / "cache"))
    digests = versions.cache_path(versions.DIGESTS)
    weights = tmp_path / "weights.bin"
    weights.write_bytes(os.urandom(versions.CACHED_FROM_BYTES))
    expected = hashlib.sha256(weights.read_bytes()).hexdigest()[:10]
    assert versions.file_digest(str(weights)) == expected
    cache = json.loads(digests.read_text())
    assert cache[str(weights)]["digest"] == expected

    # A new process (no in-process cache) takes the stored digest without reading the file:
    # shown by a stored value no hash of the file could give.
    cache[str(weights)]["digest"] = "from-cache"
    digests.write_text(json.dumps(cache))
    versions._digest.cache_clear()
    assert versions.file_digest(str(weights)) == "from-cache"

    # Rewritten (new mtime): hashed again, and the cache follows.
    before = weights.stat().st_mtime_ns
    weights.write_bytes(os.urandom(versions.CACHED_FROM_BYTES))  # same size
    os.utime(weights, ns=(before + 10**9, before + 10**9))  # a later mtime, whatever the clock's grain
    fresh = hashlib.sha256(weights.read_bytes()).hexdigest()[:10]
    assert versions.file_digest(str(weights)) == fresh != expected
    assert json.loads(digests.read_text())[str(weights)]["digest"] == fresh

    # Small files are never stored: policies and heads hash in microseconds.
    small = tmp_path / "policy.sql"
    small.write_text("SELECT 1")
    versions.file_digest(str(small))
    assert str(small) not in json.loads(digests.read_text())
