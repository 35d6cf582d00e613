"""A real model and a real-looking crawl on the first run: a ViT-B-32 checkpoint with no head
settings materializes every asset (zero-shot heads), a crawl with LAION-2B's share of near
duplicates warns instead of blocking, and `materialize`'s exit status tells a blocked subset
from a crashed step."""

import json
import shutil
import tarfile

import pyarrow.parquet as pq
import pytest
from dagster import AssetCheckSeverity, AssetKey, AssetRecordsFilter, AssetsDefinition, DagsterInstance

from assets.definitions import checks
from assets.demo.sample_crawl import write_sample_crawl
from orchestration.definitions import build_definitions
from resources.catalog import open_catalog
from resources.clip_model import DEMO_CHECKPOINT, DEMO_MODEL, model_id
from resources.lake import LakeResource, committed_subset
from tests.conftest import REPO, run_cli

PUBLISHED = ("laion400m", "laion2b_en", "datacomp_basic", "datacomp_clip_top30", "metaclip_balanced")


def _materializations(home, key: AssetKey, partition: str | None = None) -> list:
    with DagsterInstance.from_config(str(home)) as instance:
        return instance.fetch_materializations(
            AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None), limit=5).records


def test_vit_b_32_with_no_head_settings_materializes_every_asset(tmp_path, vit_b_32_checkpoint):
    crawl, lake, home = tmp_path / "crawl", tmp_path / "lake", tmp_path / "home"
    write_sample_crawl(crawl, 2, 40, seed=5, image_size=256)  # img2dataset's default image size
    model = ["--model", "ViT-B-32", "--pretrained", vit_b_32_checkpoint]
    result = run_cli("materialize", "--crawl", str(crawl), "--lake", str(lake), "--in-process", *model,
                     env={"DAGSTER_HOME": str(home)}, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    defs = build_definitions(crawl=str(crawl), lake=str(lake), model_name="ViT-B-32", pretrained=vit_b_32_checkpoint)
    assets = [a for a in defs.assets if isinstance(a, AssetsDefinition) and a.key != AssetKey("sample_crawl")]
    # samples, embeddings, 10 scores, caption candidates and preference pairs, 3 near-duplicate
    # steps, 7 x 3 per policy, evaluation; the
    # flyt group (scorer, mix, their 2 per-shard scores, 2 x 3 per policy) runs with --flyt
    # only, the downstream proxy with `clipsieve proxy` only
    learned = [a for a in assets if a.group_names_by_key[a.key] in ("flyt", "proxy")]
    assets = [a for a in assets if a not in learned]
    assert len(assets) == 39 and len(learned) == 11
    for asset in assets:
        for partition in (["00000", "00001"] if asset.partitions_def else [None]):
            records = _materializations(home, asset.key, partition)
            assert records, f"{asset.key.to_user_string()} {partition or ''} was not materialized"
    vit_id = model_id("ViT-B-32", vit_b_32_checkpoint)
    lake_resource = LakeResource(root=str(lake))
    for name, column in (("nsfw", "punsafe"), ("watermark", "pwatermark"), ("aesthetic", "aesthetic"),
                         ("text_in_image", "ptext")):
        metadata = _materializations(home, AssetKey(["scores", name]), "00001")[0].asset_materialization.metadata
        assert metadata["head_kind"].value == "zero_shot"
        assert metadata["head_source"].value.endswith(f"zero_shot_{name}.toml")
        assert "512-d" in metadata["head_reason"].value
        recorded = lake_resource.parquet_metadata(f"shards/00001/scores/{vit_id}/{name}.parquet")
        assert recorded["head_kind"] == "zero_shot"
        values = pq.read_table(lake / f"shards/00001/scores/{vit_id}/{name}.parquet").column(column).to_numpy()
        low, high = (1.0, 10.0) if name == "aesthetic" else (0.0, 1.0)
        assert len(values) and ((values >= low) & (values <= high)).all()

    key = pq.read_table(lake / f"shards/00000/embeddings/{vit_id}/keys.parquet").column("key")[0].as_py()
    explained = json.loads(run_cli("explain", "--lake", str(lake), key, *model).stdout)
    assert explained["heads"]["punsafe"]["kind"] == "zero_shot"
    assert explained["heads"]["aesthetic"]["source"].endswith("zero_shot_aesthetic.toml")
    evaluation = json.loads((lake / "evaluation" / "metrics.json").read_text())
    assert {(h["head"], h["kind"]) for h in evaluation["heads"]} == {("nsfw", "zero_shot"), ("watermark", "zero_shot")}
    # The preference candidates are counted against ViT-B-32's 77-token context.
    candidates = f"shards/00001/preference/{vit_id}/candidates.parquet"
    assert lake_resource.parquet_metadata(candidates)["clipsieve.context_length"] == "77"
    assert lake_resource.read_parquet(candidates).num_rows >= 4 * 30  # alt-text = true caption, three more


@pytest.fixture(scope="module")
def duplicated(tmp_path_factory) -> dict:
    """The demo model over a crawl in which 30% of the rows are near duplicates, as in LAION-2B."""
    root = tmp_path_factory.mktemp("duplicated")
    write_sample_crawl(root / "crawl", 3, 120, seed=3, near_duplicate_share=0.3)
    result = run_cli("materialize", "--crawl", str(root / "crawl"), "--lake", str(root / "lake"), "--in-process",
                     env={"DAGSTER_HOME": str(root / "home")}, check=False)
    return {"root": root, "lake": root / "lake", "home": root / "home", "result": result}


def test_near_duplicates_warn_on_published_policies_and_safe_stays_gated(duplicated):
    result, lake = duplicated["result"], duplicated["lake"]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for policy in PUBLISHED:
        recorded = committed_subset(LakeResource(root=str(lake)), policy)["checks"]
        assert not recorded["duplicate_rate"]["passed"] and recorded["duplicate_rate"]["blocking"] is False, policy
        assert recorded["duplicate_rate"]["value"] > 0.2
        assert f"{policy}_subset:duplicate_rate" in result.stdout
        # the index, audit and export went on
        assert (lake / "audits" / policy / "metrics.json").exists()
        assert _materializations(duplicated["home"], AssetKey(f"{policy}_index"))
    assert "checks that warned" in result.stdout and "blocked by a failed blocking check: 0" in result.stdout
    safe = committed_subset(LakeResource(root=str(lake)), "safe")["checks"]
    assert all(check["passed"] and check["blocking"] for check in safe.values())
    catalog = open_catalog(LakeResource(root=str(lake)).url, model_id(DEMO_MODEL, DEMO_CHECKPOINT))
    try:
        flagged = catalog.query("SELECT count(*) AS n FROM subset_members JOIN duplicates USING (shard, key) "
                                "WHERE policy = 'safe' AND is_duplicate").column("n")[0].as_py()
        members = catalog.query("SELECT count(*) AS n FROM subset_members WHERE policy = 'safe'").column("n")[0]
    finally:
        catalog.close()
    assert flagged == 0 and members.as_py() > 50
    defs = build_definitions(crawl=str(duplicated["root"] / "crawl"), lake=str(lake))
    specs = {(spec.asset_key.to_user_string(), spec.name): spec.blocking
             for asset in defs.assets if isinstance(asset, AssetsDefinition) for spec in asset.check_specs}
    assert specs[("safe_subset", "duplicate_rate")] is True
    assert specs[("laion400m_subset", "duplicate_rate")] is False
    # a failed check warns in the UI on a published policy and is an error on safe
    over = {"nsfw_rate": 0.5, "duplicate_rate": 0.5, "group_removal_ratio": 9.0}
    for policy, severity in (("laion400m", AssetCheckSeverity.WARN), ("safe", AssetCheckSeverity.ERROR)):
        limits = checks.bounds(policy, defs.resources["files"].checks)
        results = checks.evaluate(checks.SUBSET_CHECKS, limits, over, checks.is_blocking(limits))
        assert {r.severity for r in results} == {severity} and not any(r.passed for r in results)


def test_a_warned_subset_exports_and_the_crawl_is_found_from_the_lake(duplicated, tmp_path):
    lake = duplicated["lake"]
    out = tmp_path / "export"
    exported = run_cli("export", "--lake", str(lake), "--subset", "laion400m", "--format", "webdataset",
                       "--out", str(out), env={"CLIPSIEVE_CRAWL": ""})
    assert "warning: subset 'laion400m' check duplicate_rate" in exported.stderr
    members = pq.read_table(lake / "subsets" / "laion400m" / "members.parquet").num_rows
    with tarfile.open(out / "00000.tar") as tar:
        assert len([n for n in tar.getnames() if n.endswith(".jpg")]) == members
    moved = tmp_path / "moved_crawl"
    shutil.move(duplicated["root"] / "crawl", moved)  # the recorded crawl is gone: say so
    try:
        refused = run_cli("export", "--lake", str(lake), "--subset", "safe", "--format", "webdataset",
                          "--out", str(tmp_path / "again"), env={"CLIPSIEVE_CRAWL": ""}, check=False)
    finally:
        shutil.move(moved, duplicated["root"] / "crawl")
    assert refused.returncode != 0 and "crawl" in refused.stderr


def test_exit_status_tells_a_blocked_subset_from_a_crashed_step(tmp_path):
    crawl, lake = tmp_path / "crawl", tmp_path / "lake"
    write_sample_crawl(crawl, 2, 40, seed=7)
    bounds = tmp_path / "checks.toml"
    bounds.write_text("[default]\nblocking = false\n\n[safe]\nblocking = true\nmax_duplicate_rate = -1.0\n")
    policies = tmp_path / "policies"
    policies.mkdir()
    for policy in ("laion400m", "safe"):
        shutil.copy(REPO / "sql" / "policies" / f"{policy}.sql", policies)
    env = {"DAGSTER_HOME": str(tmp_path / "home"), "CLIPSIEVE_CHECKS": str(bounds),
           "CLIPSIEVE_POLICY_DIR": str(policies)}

    blocked = run_cli("materialize", "--crawl", str(crawl), "--lake", str(lake), env=env, check=False)
    assert blocked.returncode == 3, blocked.stdout[-3000:] + blocked.stderr[-3000:]
    assert "blocked by a failed blocking check: 1" in blocked.stdout
    assert "safe_subset:duplicate_rate" in blocked.stdout
    assert not (lake / "audits" / "safe").exists() and (lake / "audits" / "laion400m").exists()
    # evaluation ran although a subset it reads was blocked
    assert (lake / "evaluation" / "metrics.json").exists()
    assert _materializations(tmp_path / "home", AssetKey("evaluation"))
    refused = run_cli("export", "--lake", str(lake), "--subset", "safe", "--format", "uids", "--out",
                      str(tmp_path / "out"), check=False)
    assert refused.returncode != 0 and "no committed subset 'safe'" in refused.stderr
    assert "failed blocking checks: duplicate_rate" in refused.stderr

    (policies / "broken.sql").write_text("SELECT key, shard FROM no_such_view;\n")
    crashed = run_cli("materialize", "--crawl", str(crawl), "--lake", str(lake), env=env, check=False)
    assert crashed.returncode == 1, crashed.stdout[-3000:] + crashed.stderr[-3000:]
    assert "runs with a crashed step: 1" in crashed.stdout and "broken_subset" in crashed.stdout


def test_a_shard_deleted_from_the_crawl_leaves_the_pool_and_gc_deletes_its_files(tmp_path):
    crawl, lake, home = tmp_path / "crawl", tmp_path / "lake", tmp_path / "home"
    write_sample_crawl(crawl, 3, 40, seed=8)
    bounds = tmp_path / "checks.toml"
    bounds.write_text("[default]\n")  # a 120-row crawl's rates would trip the default bounds
    env = {"DAGSTER_HOME": str(home), "CLIPSIEVE_CHECKS": str(bounds)}
    run_cli("materialize", "--crawl", str(crawl), "--lake", str(lake), "--in-process", env=env)
    members_before = pq.read_table(lake / "subsets" / "laion400m" / "members.parquet")
    assert "00002" in set(members_before.column("shard").to_pylist())
    for suffix in (".tar", ".parquet", "_stats.json"):
        (crawl / f"00002{suffix}").unlink()

    again = run_cli("materialize", "--crawl", str(crawl), "--lake", str(lake), "--in-process", env=env)
    assert "shards no longer in the crawl, now out of the pool: 00002" in again.stdout
    assert "cross-shard: materializing" in again.stdout
    with DagsterInstance.from_config(str(home)) as instance:
        assert sorted(instance.get_dynamic_partitions("shards")) == ["00000", "00001"]
    for policy in ("laion400m", "safe"):
        shards = set(pq.read_table(lake / "subsets" / policy / "members.parquet").column("shard").to_pylist())
        assert "00002" not in shards, policy
    rows = json.loads(run_cli("query", "--lake", str(lake), "--json",
                              "SELECT DISTINCT shard FROM samples ORDER BY shard").stdout)
    assert [r["shard"] for r in rows] == ["00000", "00001"]
    run_cli("export", "--lake", str(lake), "--subset", "laion400m", "--format", "webdataset",
            "--out", str(tmp_path / "export"), env={"CLIPSIEVE_CRAWL": ""})  # no missing tar
    assert (lake / "retired" / "shards" / "00002" / "samples.parquet").exists()
    collected = json.loads(run_cli("gc", "--lake", str(lake)).stdout)
    assert collected["deleted"] == ["retired/shards/00002"] and not (lake / "retired").exists()
    quiet = run_cli("materialize", "--crawl", str(crawl), "--lake", str(lake), "--in-process", env=env)
    assert "no longer in the crawl" not in quiet.stdout
