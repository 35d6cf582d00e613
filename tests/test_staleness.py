"""A model change or a policy change makes exactly the dependent assets stale (Dagster's API)."""

import shutil

import pytest
from dagster import AssetKey, DagsterInstance, materialize
from dagster._core.definitions.data_version import StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver
from safetensors.torch import load_file, save_file

from assets import checks
from assets.sample_crawl import write_sample_crawl
from orchestration.definitions import build_definitions
from orchestration.runner import run_pipeline
from resources.clip_model import DEMO_CHECKPOINT, DEMO_DIR, DEMO_MODEL

SHARD = "00000"
PER_SHARD_MODEL = ["embeddings", "scores/clip_similarity", "scores/nsfw", "scores/watermark", "scores/aesthetic"]
PER_SHARD_TEXT = ["samples", "scores/language", "scores/quality", "scores/exact_hash", "scores/toxicity",
                  "scores/concepts"]
POLICIES = ["laion400m", "laion2b_en", "datacomp_basic", "datacomp_clip_top30", "metaclip_balanced", "safe"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One small shard materialized with the demo model, in an instance of its own."""
    root = tmp_path_factory.mktemp("staleness")
    (root / "checks.toml").write_text("[default]\n")  # a 60-row crawl would trip the duplicate bounds
    patch = pytest.MonkeyPatch()
    patch.setattr(checks, "CHECKS_PATH", root / "checks.toml")
    write_sample_crawl(root / "crawl", shards=1, samples_per_shard=60, seed=11)
    (root / "crawl" / "ground_truth.parquet").unlink()
    paths = {"crawl": str(root / "crawl"), "lake": str(root / "lake")}
    instance = DagsterInstance.ephemeral()
    run_pipeline(build_definitions(**paths), instance, log=lambda _: None)
    yield {"root": root, "paths": paths, "instance": instance}
    instance.dispose()
    patch.undo()


def _statuses(instance, definitions) -> dict[str, StaleStatus]:
    resolver = get_stale_status_resolver(instance, [a for a in definitions.assets if hasattr(a, "keys")])
    graph = definitions.resolve_asset_graph()
    result = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if not node.is_executable or node.group_name in ("demo", "evaluation"):
            continue
        partition = SHARD if node.partitions_def is not None else None
        result[key.to_user_string()] = resolver.get_status(key, partition)
    return result


def test_nothing_is_stale_after_a_full_run(world):
    statuses = _statuses(world["instance"], build_definitions(**world["paths"]))
    assert set(statuses.values()) == {StaleStatus.FRESH}, statuses


def test_a_new_model_makes_embeddings_and_everything_below_stale(world):
    other = world["root"] / "other_model"
    other.mkdir()
    shutil.copy(DEMO_DIR / f"{DEMO_MODEL}.json", other)
    # The same weights saved again with other metadata: other bytes, so another model id.
    save_file(load_file(DEMO_CHECKPOINT), str(other / f"{DEMO_MODEL}.safetensors"), metadata={"variant": "b"})
    definitions = build_definitions(**world["paths"], model_name=DEMO_MODEL,
                                    pretrained=str(other / f"{DEMO_MODEL}.safetensors"))
    statuses = _statuses(world["instance"], definitions)
    stale = {k for k, v in statuses.items() if v == StaleStatus.STALE}
    expected = set(PER_SHARD_MODEL) | {"near_duplicates"} | {f"{g}/{p}" for g in ("subsets", "indices", "audits")
                                                            for p in POLICIES}
    assert stale == expected
    assert all(statuses[k] == StaleStatus.FRESH for k in PER_SHARD_TEXT)


def test_a_changed_policy_makes_only_its_subset_index_and_audit_stale(world):
    policies = world["root"] / "policies"
    shutil.copytree(DEMO_DIR.parents[1] / "sql" / "policies", policies)
    sql = (policies / "laion400m.sql").read_text()
    (policies / "laion400m.sql").write_text(sql.replace("max_punsafe = 0.5", "max_punsafe = 0.4"))
    definitions = build_definitions(policy_dir=policies, **world["paths"])
    statuses = _statuses(world["instance"], definitions)
    assert {k for k, v in statuses.items() if v == StaleStatus.STALE} == {"subsets/laion400m"}
    # Once the subset is redone, its index and audit follow; no other policy's assets do.
    materialize(list(definitions.assets), instance=world["instance"], resources=definitions.resources,
                selection=[AssetKey(["subsets", "laion400m"])])
    statuses = _statuses(world["instance"], definitions)
    assert {k for k, v in statuses.items() if v == StaleStatus.STALE} == {"indices/laion400m", "audits/laion400m"}


def test_a_large_files_digest_is_kept_across_processes_until_the_file_changes(tmp_path, monkeypatch):
    import hashlib
    import json
    import os

    from resources import versions

    monkeypatch.setattr(versions, "CACHE_PATH", tmp_path / "cache" / "file_digests.json")
    weights = tmp_path / "weights.bin"
    weights.write_bytes(os.urandom(versions.CACHED_FROM_BYTES))
    expected = hashlib.sha256(weights.read_bytes()).hexdigest()[:10]
    assert versions.file_digest(str(weights)) == expected
    cache = json.loads(versions.CACHE_PATH.read_text())
    assert cache[str(weights)]["digest"] == expected

    # A new process (no in-process cache) takes the stored digest without reading the file:
    # shown by a stored value no hash of the file could give.
    cache[str(weights)]["digest"] = "from-cache"
    versions.CACHE_PATH.write_text(json.dumps(cache))
    versions._digest.cache_clear()
    assert versions.file_digest(str(weights)) == "from-cache"

    # Rewritten (new mtime): hashed again, and the cache follows.
    before = weights.stat().st_mtime_ns
    weights.write_bytes(os.urandom(versions.CACHED_FROM_BYTES))  # same size
    os.utime(weights, ns=(before + 10**9, before + 10**9))  # a later mtime, whatever the clock's grain
    fresh = hashlib.sha256(weights.read_bytes()).hexdigest()[:10]
    assert versions.file_digest(str(weights)) == fresh != expected
    assert json.loads(versions.CACHE_PATH.read_text())[str(weights)]["digest"] == fresh

    # Small files are never stored: policies and heads hash in microseconds.
    small = tmp_path / "policy.sql"
    small.write_text("SELECT 1")
    versions.file_digest(str(small))
    assert str(small) not in json.loads(versions.CACHE_PATH.read_text())
