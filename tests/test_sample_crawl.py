"""The sample crawl is img2dataset's webdataset format, deterministic, with planted defects."""

import io
import json
import tarfile

import pyarrow.parquet as pq
import pytest
from PIL import Image

from assets.demo.sample_crawl import DEFECTS, write_sample_crawl
from tests.conftest import SAMPLES_PER_SHARD, SHARDS

IMG2DATASET_COLUMNS = ["url", "caption", "key", "status", "error_message", "width", "height",
                       "original_width", "original_height", "exif", "sha256"]


def _members(path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_shard_files_follow_img2dataset_layout(crawl):
    for shard in range(SHARDS):
        name = f"{shard:05d}"
        table = pq.read_table(crawl / f"{name}.parquet")
        assert set(IMG2DATASET_COLUMNS) <= set(table.column_names)
        assert "uid" in table.column_names  # DataComp-style crawls carry one
        rows = table.to_pylist()
        assert len(rows) == SAMPLES_PER_SHARD
        assert all(r["key"].startswith(name) and len(r["key"]) == 9 for r in rows)
        members = _members(crawl / f"{name}.tar")
        stats = json.loads((crawl / f"{name}_stats.json").read_text())
        successes = [r for r in rows if r["status"] == "success"]
        assert stats["count"] == len(rows) and stats["successes"] == len(successes)
        assert stats["failed_to_download"] == len(rows) - len(successes)
        assert len(members) == 3 * len(successes)
        for r in successes:
            assert members[f"{r['key']}.txt"].decode() == r["caption"]
            assert json.loads(members[f"{r['key']}.json"])["key"] == r["key"]
        for r in rows:
            if r["status"] != "success":
                assert r["error_message"] and r["sha256"] is None and f"{r['key']}.jpg" not in members
        # Tar members are not in key order, as img2dataset writes them.
        jpgs = [n for n in members if n.endswith(".jpg")]
        assert jpgs != sorted(jpgs)


def test_ground_truth_plants_every_defect_at_two_percent_or_more(crawl):
    truth = pq.read_table(crawl / "ground_truth.parquet").to_pylist()
    assert len(truth) == SHARDS * SAMPLES_PER_SHARD
    assert len({r["key"] for r in truth}) == len(truth)  # at most one defect per sample
    for defect in DEFECTS:
        share = sum(r["defect"] == defect for r in truth) / len(truth)
        assert share >= 0.02, defect
    assert {r["defect"] for r in truth} - {None} == set(DEFECTS)


def test_planted_defects_are_what_they_claim(crawl):
    truth = {r["key"]: r for r in pq.read_table(crawl / "ground_truth.parquet").to_pylist()}
    members, rows = {}, {}
    for shard in range(SHARDS):
        members.update(_members(crawl / f"{shard:05d}.tar"))
        rows.update({r["key"]: r for r in pq.read_table(crawl / f"{shard:05d}.parquet").to_pylist()})
    for key, t in truth.items():
        image = members.get(f"{key}.jpg")
        if t["defect"] == "failed_download":
            assert image is None and rows[key]["status"] == "failed_to_download"
            continue
        if t["defect"] == "corrupt_image":
            with pytest.raises((OSError, SyntaxError)):  # PIL's errors for unreadable image bytes
                Image.open(io.BytesIO(image)).load()
            continue
        size = Image.open(io.BytesIO(image)).size
        if t["defect"] == "small_image":
            assert min(size) < 32
        elif t["defect"] == "extreme_aspect":
            assert max(size) / min(size) > 3.5
        elif t["defect"] == "exact_duplicate":
            assert t["duplicate_of"] < key and image == members[f"{t['duplicate_of']}.jpg"]
        elif t["defect"] == "near_duplicate":
            assert t["duplicate_of"] < key and image != members[f"{t['duplicate_of']}.jpg"]
            assert truth[t["duplicate_of"]]["defect"] is None


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        write_sample_crawl(tmp_path / name, shards=1, samples_per_shard=60, seed=seed)
    for suffix in (".tar", ".parquet", "_stats.json"):
        assert (tmp_path / "a" / f"00000{suffix}").read_bytes() == (tmp_path / "b" / f"00000{suffix}").read_bytes()
    assert (tmp_path / "a" / "00000.tar").read_bytes() != (tmp_path / "c" / "00000.tar").read_bytes()


def test_the_sample_crawl_never_writes_into_a_folder_it_did_not_write(tmp_path):
    from assets.demo.sample_crawl import MARKER

    real = tmp_path / "real_crawl"
    real.mkdir()
    (real / "00000.tar").write_bytes(b"a crawl shard")
    with pytest.raises(ValueError, match="did not write"):
        write_sample_crawl(real, 1, 40, seed=1)
    assert sorted(p.name for p in real.iterdir()) == ["00000.tar"]
    ours = tmp_path / "sample"
    write_sample_crawl(ours, 1, 40, seed=1)
    assert (ours / MARKER).exists()
    write_sample_crawl(ours, 1, 40, seed=2)  # its own folder: rewritten


def test_the_demo_crawl_is_a_job_outside_the_asset_graph(tmp_path):
    from dagster import DagsterInstance

    from orchestration.definitions import defs

    assert "sample_crawl" not in {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    with DagsterInstance.ephemeral() as instance:
        config = {"ops": {"write_demo_crawl": {"config": {"out": str(tmp_path / "crawl"), "shards": 2,
                                                          "samples_per_shard": 40}}}}
        result = defs.resolve_job_def("demo_crawl").execute_in_process(run_config=config, instance=instance)
        assert result.success and instance.get_dynamic_partitions("shards") == ["00000", "00001"]
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "00000.parquet").write_bytes(b"not ours")
        config["ops"]["write_demo_crawl"]["config"]["out"] = str(tmp_path / "other")
        refused = defs.resolve_job_def("demo_crawl").execute_in_process(run_config=config, instance=instance,
                                                                        raise_on_error=False)
        assert not refused.success
