"""A model change or a policy change makes exactly the dependent assets stale, as the
Dagster UI shows it: the UI's own GraphQL query (`staleStatus` of each asset node), run by
Dagster's `dagster-graphql` tool against the instance and a code location built with the
test's settings."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, materialize
from safetensors.torch import load_file, save_file

from assets.sample_crawl import write_sample_crawl
from orchestration.definitions import build_definitions
from orchestration.runner import run_pipeline
from resources.clip_model import DEMO_CHECKPOINT, DEMO_DIR, DEMO_MODEL

SHARD = "00000"
PER_SHARD_MODEL = ["embeddings", "scores/clip_similarity", "scores/nsfw", "scores/watermark", "scores/aesthetic"]
PER_SHARD_TEXT = ["samples", "scores/language", "scores/quality", "scores/exact_hash", "scores/toxicity",
                  "scores/concepts"]
POLICIES = ["laion400m", "laion2b_en", "datacomp_basic", "datacomp_clip_top30", "metaclip_balanced", "safe"]
REPO = Path(__file__).resolve().parents[1]
# What the UI asks for each asset node (its stale badge).
STALE_QUERY = """
query Stale($perShard: [AssetKeyInput!], $crossShard: [AssetKeyInput!], $partitions: [String!]) {
  perShard: assetNodes(assetKeys: $perShard) { assetKey { path } staleStatusByPartition(partitions: $partitions) }
  crossShard: assetNodes(assetKeys: $crossShard) { assetKey { path } staleStatus }
}"""
# A code location: the definitions built with the settings in the CLIPSIEVE_TEST_DEFS variable.
LOCATION = """\
import json
import os
from pathlib import Path

from orchestration.definitions import build_definitions

settings = json.loads(os.environ["CLIPSIEVE_TEST_DEFS"])
policies = settings.pop("policy_dir", None)
defs = build_definitions(Path(policies) if policies else None, **settings)
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One small shard materialized with the demo model, in an instance folder of its own."""
    root = tmp_path_factory.mktemp("staleness")
    (root / "checks.toml").write_text("[default]\n")  # a 60-row crawl would trip the duplicate bounds
    write_sample_crawl(root / "crawl", shards=1, samples_per_shard=60, seed=11)
    (root / "crawl" / "ground_truth.parquet").unlink()
    paths = {"crawl": str(root / "crawl"), "lake": str(root / "lake"), "checks": str(root / "checks.toml")}
    home = root / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    (root / "location.py").write_text(LOCATION)
    instance = DagsterInstance.from_config(str(home))
    run_pipeline(build_definitions(**paths), instance, log=lambda _: None)
    yield {"root": root, "paths": paths, "instance": instance, "home": home}
    instance.dispose()


def _statuses(world: dict, **settings) -> dict[str, str]:
    """Asset key -> the UI's stale status (of the shard's partition for per-shard assets)."""
    env = {**os.environ, "DAGSTER_HOME": str(world["home"]),
           "CLIPSIEVE_TEST_DEFS": json.dumps({**world["paths"], **{k: str(v) for k, v in settings.items()}})}
    specs = [spec for spec in build_definitions(**world["paths"]).resolve_all_asset_specs()
             if spec.group_name not in ("evaluation", "crawl")]
    variables = {"partitions": [SHARD],
                 "perShard": [{"path": spec.key.path} for spec in specs if spec.partitions_def is not None],
                 "crossShard": [{"path": spec.key.path} for spec in specs if spec.partitions_def is None]}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dagster-graphql"), "-f", str(world["root"] / "location.py"), "-a", "defs",
         "-t", STALE_QUERY, "-v", json.dumps(variables), "-o", str(world["root"] / "stale.json")],
        cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((world["root"] / "stale.json").read_text())["data"]
    statuses = {"/".join(node["assetKey"]["path"]): node["staleStatusByPartition"][0] for node in data["perShard"]}
    statuses.update({"/".join(node["assetKey"]["path"]): node["staleStatus"] for node in data["crossShard"]})
    assert len(statuses) == len(specs)
    return statuses


def test_nothing_is_stale_after_a_full_run(world):
    statuses = _statuses(world)
    assert set(statuses.values()) == {"FRESH"}, statuses


def test_a_new_model_makes_embeddings_and_everything_below_stale(world):
    other = world["root"] / "other_model"
    other.mkdir()
    shutil.copy(DEMO_DIR / f"{DEMO_MODEL}.json", other)
    # The same weights saved again with other metadata: other bytes, so another model id.
    save_file(load_file(DEMO_CHECKPOINT), str(other / f"{DEMO_MODEL}.safetensors"), metadata={"variant": "b"})
    statuses = _statuses(world, model_name=DEMO_MODEL, pretrained=other / f"{DEMO_MODEL}.safetensors")
    stale = {k for k, v in statuses.items() if v == "STALE"}
    expected = set(PER_SHARD_MODEL) | {"near_duplicates"} | {f"{g}/{p}" for g in ("subsets", "indices", "audits")
                                                            for p in POLICIES}
    assert stale == expected
    assert all(statuses[k] == "FRESH" for k in PER_SHARD_TEXT)


def test_a_changed_policy_makes_only_its_subset_index_and_audit_stale(world):
    policies = world["root"] / "policies"
    shutil.copytree(DEMO_DIR.parents[1] / "sql" / "policies", policies)
    sql = (policies / "laion400m.sql").read_text()
    (policies / "laion400m.sql").write_text(sql.replace("max_punsafe = 0.5", "max_punsafe = 0.4"))
    statuses = _statuses(world, policy_dir=policies)
    assert {k for k, v in statuses.items() if v == "STALE"} == {"subsets/laion400m"}
    definitions = build_definitions(policy_dir=policies, **world["paths"])
    # Once the subset is redone, its index and audit follow; no other policy's assets do.
    materialize(list(definitions.assets), instance=world["instance"], resources=definitions.resources,
                selection=[AssetKey(["subsets", "laion400m"])])
    statuses = _statuses(world, policy_dir=policies)
    assert {k for k, v in statuses.items() if v == "STALE"} == {"indices/laion400m", "audits/laion400m"}


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
