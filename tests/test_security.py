"""Untrusted code and data paths (docs/security.md): pickled weights never run, untrusted
SQL only reads the lake, the UI binds to loopback, and crawl names never escape a folder."""

import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from assets.demo.sample_crawl import write_sample_crawl
from assets.export import _write_shard, export_webdataset
from assets.samples import read_samples
from assets.subsets import Policy, commit_subset, run_policy, uid_array
from orchestration.sensors import new_shards
from resources.catalog import Catalog, RefusedSQLError, open_catalog
from resources.clip_model import DEMO_CHECKPOINT, DEMO_DIR, DEMO_MODEL, ClipModelResource, model_id
from resources.crawl import CrawlResource
from resources.heads import HeadsResource
from resources.lake import LakeResource, members_path, samples_path, uids_path
from resources.safe_paths import (
    UnsafeNameError,
    check_member_name,
    check_relative,
    check_shard_name,
    member_stem,
)
from resources.safe_weights import UnsafeWeightsError
from tests.conftest import REPO, run_cli

MODEL_ID = model_id(DEMO_MODEL, DEMO_CHECKPOINT)
SHARD = "00000"


# --- 1. weights ---------------------------------------------------------------------


class _RunsShell:
    """Unpickling this runs a shell command: what a hostile checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


@pytest.fixture
def weights_dir(tmp_path: Path) -> Path:
    # The demo model's config beside the checkpoint, as a real local checkpoint would have it.
    shutil.copy(DEMO_DIR / f"{DEMO_MODEL}.json", tmp_path)
    return tmp_path


def _hostile_pickle(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {"visual.proj": _RunsShell(marker)}}, path)
    return path


def test_the_hostile_pickle_really_runs_code_when_unpickled(tmp_path):
    # Control: without weights_only the payload runs, so the refusals below mean something.
    marker = tmp_path / "ran"
    torch.load(_hostile_pickle(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".npz", ".safetensors"])
def test_hostile_checkpoint_is_refused_without_running(weights_dir, suffix):
    marker = weights_dir / "ran"
    evil = _hostile_pickle(weights_dir / f"evil{suffix}", marker)
    with pytest.raises(UnsafeWeightsError, match=re.escape(str(evil))):
        ClipModelResource(model_name=DEMO_MODEL, pretrained=str(evil), device="cpu").load()
    assert not marker.exists()


def test_hostile_checkpoint_from_the_environment_is_refused(weights_dir):
    marker = weights_dir / "ran"
    evil = _hostile_pickle(weights_dir / "evil.pt", marker)
    result = subprocess.run(
        [sys.executable, "-c", "from resources.clip_model import ClipModelResource; ClipModelResource().load()"],
        cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "CLIPSIEVE_MODEL": DEMO_MODEL, "CLIPSIEVE_PRETRAINED": str(evil)},
    )
    assert result.returncode != 0
    assert "UnsafeWeightsError" in result.stderr and str(evil) in result.stderr
    assert "weights_only=True" in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_hostile_head_is_refused_without_running(tmp_path, suffix):
    marker = tmp_path / "ran"
    evil = _hostile_pickle(tmp_path / f"nsfw_head{suffix}", marker)
    with pytest.raises(UnsafeWeightsError, match=re.escape(str(evil))):
        HeadsResource(nsfw_path=str(evil)).load("nsfw")
    assert not marker.exists()


@pytest.mark.parametrize("wrapped", [False, True], ids=["state_dict", "training_checkpoint"])
def test_plain_torch_state_dict_still_loads(weights_dir, wrapped):
    demo = ClipModelResource(device="cpu", precision="fp32").load()
    state = demo.model.state_dict()
    path = weights_dir / "demo_fp32.pt"
    torch.save({"state_dict": state, "epoch": 3} if wrapped else state, path)
    loaded = ClipModelResource(model_name=DEMO_MODEL, pretrained=str(path), device="cpu", precision="fp32").load()
    for (name, expected), (other, actual) in zip(state.items(), loaded.model.state_dict().items()):
        assert name == other and torch.equal(expected, actual), name
    image = demo.preprocess(Image.new("RGB", (90, 70), (30, 160, 40))).unsqueeze(0)
    with torch.inference_mode():
        np.testing.assert_allclose(demo.model.encode_image(image).numpy(), loaded.model.encode_image(image).numpy(),
                                   rtol=0, atol=1e-6)


# --- a hostile crawl and a small lake built from it -----------------------------------

# Keys a hostile crawl could carry. The samples reader may stop some of them before the
# export (a key with "/" never matches a tar image); the shard writer is also tested with
# them directly, below.
HOSTILE_KEYS = ["../../evil", "/abs/evil", "..\\..\\win_evil", "..", "a.b.c"]


def _rename_tar(tar_path: Path, renames: dict[str, str]) -> None:
    """Rewrite the tar with members `<old key>.<ext>` named `<new key>.<ext>`."""
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    with tarfile.open(tar_path, "w") as tar:
        for member, data in members:
            stem, _, extension = member.name.rpartition(".")
            info = tarfile.TarInfo(f"{renames.get(stem, stem)}.{extension}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict:
    """One shard whose first clean samples carry HOSTILE_KEYS, in its parquet and its tar;
    a lake with its samples (read by the real reader) and a subset of every usable sample."""
    root = tmp_path_factory.mktemp("hostile")
    crawl = root / "crawl"
    write_sample_crawl(crawl, shards=1, samples_per_shard=24, seed=7)
    truth = pq.read_table(crawl / "ground_truth.parquet").to_pylist()
    clean = [r["key"] for r in truth if r["defect"] is None][: len(HOSTILE_KEYS)]
    renames = dict(zip(clean, HOSTILE_KEYS))
    table = pq.read_table(crawl / f"{SHARD}.parquet")
    keys = [renames.get(k, k) for k in table.column("key").to_pylist()]
    pq.write_table(table.set_column(table.column_names.index("key"), "key", pa.array(keys)),
                   crawl / f"{SHARD}.parquet")
    _rename_tar(crawl / f"{SHARD}.tar", renames)

    lake = LakeResource(root=str(root / "lake"))
    samples = read_samples(CrawlResource(root=str(crawl)), SHARD)
    lake.write_parquet(samples_path(SHARD), samples)
    usable = [r for r in samples.to_pylist() if r["image_status"] == "ok"]
    lake.write_parquet(members_path("hostile"), pa.Table.from_pylist(
        [{"policy": "hostile", "key": r["key"], "shard": r["shard"], "uid": r["uid"]} for r in usable]))
    outside = root / "outside.parquet"
    pq.write_table(pa.table({"key": ["secret"], "shard": ["secret"]}), outside)
    return {"root": root, "crawl": crawl, "lake": lake, "samples": samples, "usable": usable,
            "outside": outside, "renames": renames}


def _files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


# --- 4. paths -------------------------------------------------------------------------


def test_hostile_keys_reach_the_export_and_nothing_escapes(hostile, tmp_path):
    usable_keys = {r["key"] for r in hostile["usable"]}
    assert "a.b.c" in usable_keys  # a key webdataset would split at its dots reaches the export
    before = _files_under(hostile["root"])
    out = hostile["root"] / "export" / "nested"
    tars = export_webdataset(hostile["lake"], CrawlResource(root=str(hostile["crawl"])), "hostile", out,
                             samples_per_shard=8)
    created = _files_under(hostile["root"]) - before
    assert created and all(out in p.parents for p in created), sorted(map(str, created))
    assert not Path("/abs").exists()

    stems = []
    for tar_path in tars:
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                name = member.name
                assert not name.startswith("/") and "/" not in name and "\\" not in name, name
                assert ".." not in name and member.isfile(), name
                stems.append(name.split(".", 1)[0])
            # Extracting with Python's own safety filter lands every file in the target folder.
            target = tmp_path / tar_path.stem
            tar.extractall(target, filter="data")
            assert all(target in p.parents for p in _files_under(target))
    exported = [k for t in tars for k in pq.read_table(t.with_suffix(".parquet")).column("key").to_pylist()]
    assert sorted(set(stems)) == sorted(exported)
    assert sorted(exported) == sorted(member_stem(k) for k in usable_keys)
    assert {member_stem(k) for k in usable_keys & set(HOSTILE_KEYS)} <= set(exported)
    assert not usable_keys & set(HOSTILE_KEYS) & set(exported)  # no hostile key is a member name
    assert all(k in exported for k in usable_keys if re.fullmatch(r"[0-9]+", k))  # real keys unchanged


@pytest.mark.parametrize("key", ["../../evil", "/abs/evil", "..", "../", "a/../../b", "..\\..\\evil", "a.b", ""])
def test_shard_writer_never_writes_a_path_from_a_key(tmp_path, key):
    out = tmp_path / "a" / "b"
    out.mkdir(parents=True)
    row = {"key": key, "caption": "x", "status": "success"}
    tar_path = _write_shard(out, 0, [(row, {"jpg": b"\xff\xd8 not really", "txt": b"x"}, member_stem(key))])
    assert {p.relative_to(out).as_posix() for p in _files_under(tmp_path)} == \
        {"00000.tar", "00000.parquet", "00000_stats.json"}
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
    assert names == [f"{member_stem(key)}.{e}" for e in ("jpg", "txt", "json")]
    assert all(check_member_name(n) for n in names)


@pytest.mark.parametrize("name", ["..", ".", "../x", "/abs", "a/b", "", "a\\b", ".hidden", "x" * 200, "a\0b"])
def test_unsafe_shard_names_are_refused(name):
    with pytest.raises(UnsafeNameError):
        check_shard_name(name)


@pytest.mark.parametrize("name", ["00000", "part-00001", "crawl_2024.00001"])
def test_img2dataset_shard_names_pass(name):
    assert check_shard_name(name) == name


def test_lake_relative_paths_stay_below_the_root():
    for path in ["shards/00000/samples.parquet", "audits/*/metrics.json", ""]:
        assert check_relative(path) == path
    for path in ["../x", "shards/../../x", "/etc/passwd", "shards/..", "a\\..\\b"]:
        with pytest.raises(UnsafeNameError):
            check_relative(path)


def test_the_lake_refuses_paths_and_partition_names_that_leave_it(tmp_path):
    lake = LakeResource(root=str(tmp_path / "lake"))
    for write in (lambda: lake.write_bytes("../escaped", b"x"), lambda: lake.write_json("/tmp/escaped.json", {}),
                  lambda: samples_path("../../x"), lambda: members_path("../x")):
        with pytest.raises(UnsafeNameError):
            write()
    assert not (tmp_path / "escaped").exists() and not list(tmp_path.glob("**/escaped*"))


def test_sensor_skips_a_shard_named_dot_dot(hostile, tmp_path):
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    for suffix in (".tar", ".parquet", "_stats.json"):
        shutil.copy(hostile["crawl"] / f"{SHARD}{suffix}", crawl / f"{SHARD}{suffix}")
        shutil.copy(hostile["crawl"] / f"{SHARD}{suffix}", crawl / f"..{suffix}")  # "...tar": shard ".."
    assert new_shards(CrawlResource(root=str(crawl)), set()) == [SHARD]


def test_cli_refuses_a_subset_name_that_is_a_path(hostile, tmp_path):
    result = run_cli("export", "--lake", str(hostile["lake"].root), "--subset", "../../hostile",
                     "--format", "uids", "--out", str(tmp_path / "out"), check=False)
    assert result.returncode != 0 and "unsafe policy name" in result.stderr
    assert not (tmp_path / "out").exists()


# --- 2. SQL ---------------------------------------------------------------------------


@pytest.fixture
def hostile_catalog(hostile):
    db = open_catalog(hostile["lake"].url, MODEL_ID)
    yield db
    db.close()


def _refused_queries(lake: str, outside: Path) -> dict[str, str]:
    return {
        "create": "CREATE TABLE t AS SELECT 1",
        "insert": "INSERT INTO t VALUES (1)",
        "copy_into_lake": f"COPY (SELECT 1) TO '{lake}/evil.csv'",
        "copy_outside": f"COPY (SELECT 1) TO '{outside.parent}/evil.csv'",
        "attach": "ATTACH ':memory:' AS other",
        "install": "INSTALL httpfs",
        "load": "LOAD httpfs",
        "set": "SET enable_external_access = true",
        "stacked": "SELECT 1; CREATE TABLE t AS SELECT 1",
        "read_csv": "SELECT * FROM read_csv('/etc/passwd')",
        "read_text": "SELECT * FROM read_text('/etc/passwd')",
        "read_parquet_outside": f"SELECT * FROM read_parquet('{outside}')",
        "dot_dot_out_of_lake": f"SELECT * FROM read_parquet('{lake}/../{outside.name}')",
        "replacement_scan": f"SELECT * FROM '{outside}'",
        "glob": "SELECT * FROM glob('/etc/*')",
    }


def test_catalog_reads_the_lake(hostile_catalog, hostile):
    count = hostile_catalog.select("SELECT count(*) AS n FROM samples").column("n")[0].as_py()
    assert count == hostile["samples"].num_rows
    lake = hostile["lake"].url
    files = hostile_catalog.select(f"SELECT file FROM glob('{lake}/shards/*/*.parquet')").column("file").to_pylist()
    assert files == [f"{lake}/shards/{SHARD}/samples.parquet"]


@pytest.mark.parametrize("name", list(_refused_queries("L", Path("/o/x.parquet"))))
def test_query_that_does_more_than_read_the_lake_is_refused(hostile_catalog, hostile, name):
    sql = _refused_queries(hostile["lake"].url, hostile["outside"])[name]
    with pytest.raises(RefusedSQLError, match="refused"):
        hostile_catalog.select(sql)
    assert not Path(hostile["lake"].url, "evil.csv").exists()
    assert not (hostile["outside"].parent / "evil.csv").exists()
    assert hostile_catalog.select("SELECT count(*) AS n FROM samples").num_rows == 1  # the catalog is intact


def test_clipsieve_query_is_read_only(hostile):
    lake = hostile["lake"].url
    ok = run_cli("query", "--lake", lake, "SELECT count(*) AS n FROM samples")
    assert ok.stdout.split() == ["n", str(hostile["samples"].num_rows)]
    for sql in (f"COPY (SELECT 1) TO '{lake}/evil.csv'", "SELECT * FROM read_csv('/etc/passwd')"):
        result = run_cli("query", "--lake", lake, sql, check=False)
        assert result.returncode != 0 and "refused" in result.stderr, result.stderr
    assert not Path(lake, "evil.csv").exists()


def _policies(lake: str, outside: Path) -> dict[str, str]:
    body = "SELECT key, shard FROM samples"
    return {
        "set_variable_reads_a_file": f"SET VARIABLE n = (SELECT count(*) FROM read_csv('/etc/passwd'));\n{body};",
        "copy_before_select": f"COPY (SELECT 1) TO '{lake}/evil.csv';\n{body};",
        "create_before_select": f"CREATE TABLE t AS SELECT 1;\n{body};",
        "attach_before_select": f"ATTACH ':memory:' AS other;\n{body};",
        "install_before_select": f"INSTALL httpfs;\n{body};",
        "setting_before_select": f"SET enable_external_access = true;\n{body};",
        "select_reads_outside": f"SELECT key, shard FROM read_parquet('{outside}');",
        "select_globs": "SELECT file AS key, file AS shard FROM glob('/etc/*');",
        "ends_with_copy": f"{body};\nCOPY (SELECT 1) TO '{lake}/evil.csv';",
    }


@pytest.mark.parametrize("name", list(_policies("L", Path("/o/x.parquet"))))
def test_policy_that_does_more_than_read_the_lake_is_refused(hostile_catalog, hostile, name, tmp_path):
    sql = _policies(hostile["lake"].url, hostile["outside"])[name]
    with pytest.raises(ValueError, match=f"policy {name}"):
        run_policy(hostile_catalog, Policy(name, sql), {}, str(tmp_path))
    assert not Path(hostile["lake"].url, "evil.csv").exists()


def test_policy_parameters_are_evaluated_without_file_access():
    policy = Policy("peek", "SET VARIABLE n = (SELECT count(*) FROM read_csv('/etc/passwd'));\n"
                            "SELECT key, shard FROM scores WHERE caption_words >= getvariable('n');")
    with pytest.raises(ValueError, match="policy peek"):
        policy.defaults()
    assert Policy("fine", "SET VARIABLE n = 2 + 1;\nSELECT key, shard FROM scores;").defaults() == {"n": 3}


def test_remote_lake_is_readable_and_nothing_else(hostile, tmp_path):
    lake = LakeResource(root=f"memory://security-{tmp_path.name}/lake")
    lake.write_parquet(samples_path(SHARD), hostile["samples"])
    other = LakeResource(root=f"memory://security-{tmp_path.name}/lake-other")  # shares the lake's prefix
    other.write_parquet("x.parquet", hostile["samples"])
    db = open_catalog(lake.url, MODEL_ID)
    try:
        assert db.select("SELECT count(*) AS n FROM samples").column("n")[0].as_py() == hostile["samples"].num_rows
        for sql in (f"SELECT * FROM read_parquet('{other.path('x.parquet')}')",
                    f"SELECT * FROM read_parquet('{hostile['outside']}')"):
            with pytest.raises(RefusedSQLError, match="refused"):
                db.select(sql)
    finally:
        db.close()


def test_lockdown_settings_cannot_be_undone(hostile_catalog):
    settings = dict(hostile_catalog.connection.execute(
        "SELECT name, value FROM duckdb_settings() WHERE name IN ('enable_external_access', "
        "'lock_configuration', 'autoinstall_known_extensions', 'autoload_known_extensions')").fetchall())
    assert settings == {"enable_external_access": "false", "lock_configuration": "true",
                        "autoinstall_known_extensions": "false", "autoload_known_extensions": "false"}
    with pytest.raises(duckdb.Error, match="locked"):
        hostile_catalog.connection.execute("SET enable_external_access = true")


def test_python_variables_are_not_tables(hostile_catalog):
    secret = pa.table({"s": ["secret"]})
    assert duckdb.connect().execute("SELECT * FROM secret").fetchall() == [("secret",)]  # DuckDB's default
    with pytest.raises(duckdb.CatalogException):
        hostile_catalog.connection.execute("SELECT * FROM secret")
    assert secret.num_rows == 1


# --- 3. the UI ------------------------------------------------------------------------


def _ui_command(**variables: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("UI_HOST", "UI_PORT")}
    result = subprocess.run(["make", "-n", "ui", *(f"{k}={v}" for k, v in variables.items())],
                            cwd=REPO, capture_output=True, text=True, env=env, check=True)
    (line,) = [line for line in result.stdout.splitlines() if "dagster dev" in line]
    return line


def test_ui_binds_to_loopback_by_default():
    assert re.search(r"\s-h\s+127\.0\.0\.1(\s|$)", _ui_command())
    assert re.search(r"\s-p\s+3000(\s|$)", _ui_command())


def test_ui_host_is_configurable():
    line = _ui_command(UI_HOST="0.0.0.0", UI_PORT="3111")
    assert re.search(r"\s-h\s+0\.0\.0\.0\s", line) and re.search(r"\s-p\s+3111(\s|$)", line)


def test_security_doc_covers_exposing_the_ui():
    text = (REPO / "docs" / "security.md").read_text()
    assert "auth_basic" in text and "oauth2-proxy" in text and "UI_HOST" in text


def test_duckdbs_temp_directory_is_not_a_way_out_of_the_lake(lake, tmp_path, monkeypatch):
    """DuckDB may read its temp directory whatever allowed_directories says; its default is
    <cwd>/.tmp. Catalog connections spill to a private folder instead, policy parameters to none."""
    (tmp_path / ".tmp").mkdir()
    (tmp_path / ".tmp" / "secret").write_text("SECRET")
    monkeypatch.chdir(tmp_path)
    catalog = open_catalog(lake.url, model_id(DEMO_MODEL, DEMO_CHECKPOINT))
    try:
        with pytest.raises(RefusedSQLError):
            catalog.select("SELECT content FROM read_text('.tmp/secret')")
        private = Path(catalog.temp_directory)
        assert private.is_dir() and private != tmp_path / ".tmp" and oct(private.stat().st_mode)[-3:] == "700"
    finally:
        catalog.close()
    assert not private.exists()
    leaking = Policy("leak", "SET VARIABLE x = (SELECT content FROM read_text('.tmp/secret'));\n"
                             "SELECT key, shard FROM scores WHERE getvariable('x') IS NOT NULL;\n")
    with pytest.raises(ValueError, match="Permission|disabled"):
        leaking.defaults()


def test_untrusted_sql_is_stopped_by_time_and_memory_with_a_clear_error(lake):
    from resources.catalog import SqlLimitError, SqlLimits

    catalog = open_catalog(lake.url, model_id(DEMO_MODEL, DEMO_CHECKPOINT), limits=SqlLimits("100MB", "50MB", 1.0))
    try:
        with pytest.raises(SqlLimitError, match="ran over 1 s"):
            catalog.select("SELECT count(*) FROM range(100000000) a, range(1000) b WHERE a.range * b.range = -1")
        with pytest.raises(SqlLimitError, match="memory_limit 100MB"):
            catalog.select("SELECT length(string_agg(repeat('x', 100), ',')) FROM range(10000000)")
        assert catalog.select("SELECT count(*) AS n FROM samples").column("n")[0].as_py() > 0  # still usable
    finally:
        catalog.close()
    slow = run_cli("query", "--lake", lake.url, "--timeout", "1",
                   "SELECT count(*) FROM range(100000000) a, range(1000) b WHERE a.range * b.range = -1", check=False)
    assert slow.returncode != 0 and "ran over 1 s and was stopped" in slow.stderr


def test_unique_stems_qualify_colliding_names_by_shard():
    from assets.export import unique_stems

    pairs = [("00000", "a.b"), ("00000", member_stem("a.b")), ("00000", "000001"), ("00001", "000001")]
    stems = unique_stems(pairs)
    assert len(set(stems.values())) == 4
    assert stems[("00000", "000001")] == "00000_000001" and stems[("00001", "000001")] == "00001_000001"
    assert all(check_member_name(f"{s}.jpg") for s in stems.values())


@pytest.fixture(scope="module")
def merged(tmp_path_factory) -> dict:
    """Two crawls merged into one: shard 00001 holds the same keys as shard 00000."""
    root = tmp_path_factory.mktemp("merged")
    crawl = root / "crawl"
    write_sample_crawl(crawl, 1, 40, seed=4)
    for suffix in (".tar", ".parquet", "_stats.json"):
        shutil.copy(crawl / f"00000{suffix}", crawl / f"00001{suffix}")
    lake = LakeResource(root=str(root / "lake"))
    rows = []
    for shard in ("00000", "00001"):
        samples = read_samples(CrawlResource(root=str(crawl)), shard)
        lake.write_parquet(samples_path(shard), samples)
        rows += [{"policy": "merged", "key": r["key"], "shard": shard, "uid": None, "draws": 1}
                 for r in samples.to_pylist() if r["image_status"] == "ok"]
    # Committed as a subset asset commits one: its uid array made by sql/subsets/uids.sql.
    members = pa.Table.from_pylist(rows, schema=pa.schema([("policy", pa.string()), ("key", pa.string()),
                                                           ("shard", pa.string()), ("uid", pa.string()),
                                                           ("draws", pa.int64())]))
    db = Catalog(connection=duckdb.connect())
    db.connection.register("candidate", members)
    commit_subset(lake, "merged", members, "v1", {"version": "v1", "uids": uids_path("merged", "v1")}, uid_array(db))
    db.close()
    return {"root": root, "crawl": crawl, "lake": lake, "members": rows}


def test_merged_crawls_export_one_member_name_and_one_uid_per_sample(merged, tmp_path):
    from assets.export import export_uids

    tars = export_webdataset(merged["lake"], CrawlResource(root=str(merged["crawl"])), "merged", tmp_path / "wds")
    names = [n for t in tars for n in tarfile.open(t).getnames()]
    assert len(names) == len(set(names)) == 3 * len(merged["members"])
    keys = [k for t in tars for k in pq.read_table(t.with_suffix(".parquet")).column("key").to_pylist()]
    assert len(keys) == len(set(keys)) == len(merged["members"])
    uids = np.load(export_uids(merged["lake"], "merged", tmp_path / "uids"))
    assert len(uids) == len(set(uids.tolist())) == len(merged["members"])


def test_export_never_overwrites_foreign_files_or_writes_into_the_crawl(materialized, tmp_path):
    lake = str(materialized["lake"])

    def export(out, *extra, subset="laion400m", fmt="webdataset"):
        return run_cli("export", "--lake", lake, "--subset", subset, "--format", fmt, "--out", str(out),
                       "--samples-per-shard", "200", *extra, check=False)

    out = tmp_path / "out"
    assert export(out).returncode == 0
    tars_before = sorted(p.name for p in out.glob("*.tar"))
    refused = export(out, subset="safe")
    assert refused.returncode != 0 and "is not empty" in refused.stderr and "--overwrite" in refused.stderr
    assert export(out, "--overwrite", subset="safe").returncode == 0
    safe_members = pq.read_table(materialized["lake"] / "subsets" / "safe" / "members.parquet").num_rows
    exported = sum(pq.read_table(p).num_rows for p in out.glob("*.parquet"))
    assert exported == safe_members  # no stale tar of the earlier, larger export is left in
    assert len(list(out.glob("*.tar"))) < len(tars_before)
    (out / "notes.txt").write_text("mine")
    foreign = export(out, "--overwrite", subset="safe")
    assert foreign.returncode != 0 and "notes.txt" in foreign.stderr and (out / "notes.txt").exists()
    for inside in (materialized["crawl"], materialized["crawl"] / "sub", materialized["lake"] / "x"):
        into = export(inside, "--overwrite", fmt="uids")
        assert into.returncode != 0 and "an export never writes there" in into.stderr, into.stderr
    assert not (materialized["crawl"] / "laion400m_uids.npy").exists()
