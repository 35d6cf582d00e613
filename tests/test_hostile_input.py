"""Hostile crawl input: every damaged shard gives a recorded reason, loses no other sample,
and still flows through every asset.

The crawl is generated (tests/hostile_crawl.py): a small sample crawl, each shard damaged
one way, run through `clipsieve materialize`'s runner once for the whole module.
"""

import io
import shutil
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance
from PIL import Image

from assets import samples as samples_module
from assets import subsets
from assets.crawl.images import MAX_IMAGE_PIXELS, check_image
from assets.crawl.reader import MAX_CAPTION_CHARS, coerce_column
from assets.export import export_webdataset
from assets.samples import read_shard
from orchestration.definitions import defs, per_shard_keys
from resources.catalog import open_catalog, read_sql
from resources.clip_model import ClipModelResource
from resources.crawl import CrawlResource
from resources.embedding_files import embedding_failures
from resources.lake import LakeResource, embeddings_dir, score_path
from tests import hostile_crawl
from tests.conftest import pipeline
from tests.hostile_crawl import CASES, HUGE_CAPTION_CHARS, base_shards, jpeg_claiming, png_claiming

SAMPLES_PER_SHARD, SEED = 40, 7
PER_SHARD = [key.to_user_string() for key in per_shard_keys(defs)]
CROSS_SHARD = ["near_duplicates", "safe_subset", "safe_index", "safe_audit"]
# A parquet without a key column cannot give rows: its shard fails, the others go on.
FAILING_SHARD = "no_key"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hostile")
    bases, truth = base_shards(root / "base", len(CASES), SAMPLES_PER_SHARD, SEED)
    crawl = root / "crawl"
    crawl.mkdir()
    shards, base_of = {}, {}
    for (name, make), base in zip(CASES.items(), bases):
        shards[name] = make(base, truth)
        shards[name].write(crawl)
        base_of[name] = base.name
    hostile_crawl.write_unusable(bases[0], crawl, FAILING_SHARD, hostile_crawl.unusable_parquets(bases[0])["no_key"])

    # A crawl this small holds a duplicate share the default checks would (rightly) block;
    # the checks are declared when the definitions are built.
    (root / "checks.toml").write_text("[default]\n")
    # One policy is enough to run subsets, indices and audits over these shards.
    (root / "policies").mkdir()
    shutil.copy(subsets.POLICY_DIR / "safe.sql", root / "policies")
    with (pipeline(root / "home", policy_dir=root / "policies", checks=root / "checks.toml", crawl=crawl,
                   lake=root / "lake") as run, pytest.raises(RuntimeError) as failure):
        run.run()
    instance = DagsterInstance.from_config(str(root / "home"))
    yield {
        "root": root, "crawl": crawl, "shards": shards, "truth": truth, "instance": instance,
        "lake": LakeResource(root=str(root / "lake")), "failure": str(failure.value),
        # The same shards undamaged, read the same way: what every untouched sample must keep.
        "clean": {name: _by_key(read_shard(CrawlResource(root=str(root / "base")), base_of[name]).table.to_pylist())
                  for name in CASES},
    }
    instance.dispose()


def _by_key(rows: list[dict]) -> dict:
    return {r["key"]: r for r in rows if r["parquet_row"] is not None}


def _samples(hostile: dict, shard: str) -> list[dict]:
    return hostile["lake"].read_parquet(f"shards/{shard}/samples.parquet").to_pylist()


def _row(rows: list[dict], key: str) -> dict:
    (row,) = [r for r in rows if r["key"] == key and r["parquet_row"] is not None]
    return row


def _readable_members(path: Path) -> list[tarfile.TarInfo]:
    """The members a tar reader gets before any damage."""
    members = []
    try:
        with tarfile.open(path, mode="r|") as tar:
            for member in tar:
                if member.isfile():
                    tar.extractfile(member).read()
                members.append(member)
    except tarfile.TarError:
        pass
    return members


def _stored(name: str) -> str:
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


# --- every shard: counts reconcile, nothing else lost ----------------------------------------

@pytest.mark.parametrize("shard", list(CASES))
def test_every_parquet_row_once_with_a_status_and_every_member_recorded(hostile, shard):
    rows = _samples(hostile, shard)
    parquet = pq.read_table(hostile["crawl"] / f"{shard}.parquet")
    from_parquet = [r for r in rows if r["parquet_row"] is not None]
    assert [r["parquet_row"] for r in from_parquet] == list(range(parquet.num_rows))
    keys = parquet.column("key").to_pylist()
    assert [r["key"] for r in from_parquet] == [None if k is None else str(k) for k in keys]
    for row in rows:
        assert row["image_status"] and row["shard"] == shard
        assert row["image_status"] == "ok" or row["image_error"], row
    # Tar-only rows come after the parquet's, and each tar member is in some row.
    assert all(r["parquet_row"] is None for r in rows[len(from_parquet):])
    members, row_keys = {r["tar_member"] for r in rows}, {r["key"] for r in rows}
    for member in _readable_members(hostile["crawl"] / f"{shard}.tar"):
        stem, _, extension = member.name.removeprefix("./").rpartition(".")
        assert _stored(member.name) in members or (extension in ("txt", "json") and stem in row_keys), member.name


@pytest.mark.parametrize("shard", list(CASES))
def test_untouched_samples_keep_what_the_undamaged_shard_gives_them(hostile, shard):
    clean, touched = hostile["clean"][shard], hostile["shards"][shard].touched
    compared = 0
    for row in _samples(hostile, shard):
        if row["parquet_row"] is None or row["key"] in touched or row["key"] not in clean:
            continue
        before = clean[row["key"]]
        # Without a caption column, captions come from the .txt members (the same text), which
        # failed downloads do not have.
        same_caption = shard != "tar_captions" or row["status"] == "success"
        for column in ("image_status", "image_error", "tar_member", "image_bytes", "caption"):
            if column != "caption" or same_caption:
                assert row[column] == before[column], (row["key"], column)
        compared += 1
    assert compared >= {"one_sample": 1, "empty": 0, "empty_files": 0}.get(shard, 15)


# --- each case's recorded reason --------------------------------------------------------------

@pytest.mark.parametrize("shard,reason", [("truncated_tar", "unexpected end of data"),
                                          ("truncated_header", "the file ends at byte")])
def test_a_truncated_tar_keeps_what_came_before_and_names_the_damage(hostile, shard, reason):
    rows = _samples(hostile, shard)
    damaged = [r for r in rows if r["key"] in hostile["shards"][shard].touched and r["status"] == "success"]
    assert damaged
    for row in damaged:
        assert row["image_status"] == "missing_image"
        assert f"{shard}.tar unreadable after" in row["image_error"] and reason in row["image_error"]
    assert sum(r["image_status"] == "ok" for r in rows) >= 10
    assert reason in str(_metadata(hostile, shard)["crawl_notes"])


def test_unsafe_member_names_are_recorded_never_matched_and_never_paths(hostile):
    rows = _samples(hostile, "unsafe_names")
    unsafe = {r["tar_member"]: r for r in rows if r["image_status"] == "unsafe_member_name"}
    kept, moved, dotted, linked = _picks(hostile, "unsafe_names", "kept", "moved", "dotted", "linked")
    assert set(unsafe) == {f"../{kept}.jpg", f"/tmp/{kept}.jpg", f"a/../../{kept}.txt", "\x1b[31mred\x1b[0m.jpg",
                           "\ufffd\ufffd.jpg", "C:\\Windows\\evil.jpg", f"../../{moved}.jpg"}
    for row in unsafe.values():
        assert row["key"] is None and row["parquet_row"] is None and "never used as a path" in row["image_error"]
    assert _row(rows, kept)["image_status"] == "ok" and _row(rows, kept)["tar_member"] == f"{kept}.jpg"
    assert _row(rows, moved)["image_status"] == "missing_image"
    assert _row(rows, dotted)["image_status"] == "ok" and _row(rows, dotted)["tar_member"] == f"./{dotted}.jpg"
    assert _row(rows, linked)["image_status"] == "missing_image"
    (link,) = [r for r in rows if r["image_status"] == "not_a_regular_file"]
    assert link["tar_member"] == f"{linked}.jpg" and "not a regular file" in link["image_error"]
    # Nothing anywhere was written under a name the tar chose.
    assert not Path(f"/tmp/{kept}.jpg").exists()
    written = {p.name for p in hostile["root"].rglob("*")} | {p.name for p in hostile["root"].parent.glob("*")}
    assert not written & {f"{kept}.jpg", f"{moved}.jpg", f"{kept}.txt", "evil.jpg", "red\x1b[0m.jpg"}


def test_members_missing_their_txt_or_json_are_usable_with_a_warning(hostile):
    rows = _samples(hostile, "missing_sidecars")
    a, b, c = _picks(hostile, "missing_sidecars", "no_txt", "no_json", "neither")
    assert all(_row(rows, k)["image_status"] == "ok" for k in (a, b, c))
    assert _row(rows, a)["row_warnings"] == f"no {a}.txt in missing_sidecars.tar"
    assert _row(rows, b)["row_warnings"] == f"no {b}.json in missing_sidecars.tar"
    assert _row(rows, c)["row_warnings"] == f"no {c}.txt in missing_sidecars.tar; no {c}.json in missing_sidecars.tar"
    assert _row(rows, a)["caption"]  # the parquet has it


def test_captions_from_the_tar_are_capped_decoded_and_missing_ones_recorded(hostile):
    rows = _samples(hostile, "tar_captions")
    missing, huge, latin1 = _picks(hostile, "tar_captions", "missing", "huge", "latin1")
    assert _row(rows, missing)["caption"] is None
    assert "no caption column in the parquet" in _row(rows, missing)["caption_error"]
    assert len(_row(rows, huge)["caption"]) == MAX_CAPTION_CHARS
    assert f"truncated from {HUGE_CAPTION_CHARS // 13 * 13} bytes" in _row(rows, huge)["caption_error"]
    assert _row(rows, latin1)["caption"] == "une photo de caf\ufffd cr\ufffdme"
    assert "not valid UTF-8" in _row(rows, latin1)["caption_error"]
    assert "caption" in str(_metadata(hostile, "tar_captions")["crawl_notes"])


def test_a_huge_parquet_caption_is_cut_and_a_bad_txt_fills_a_null_one(hostile):
    rows = _samples(hostile, "huge_captions")
    huge, null_caption = _picks(hostile, "huge_captions", "huge", "null_caption")
    assert len(_row(rows, huge)["caption"]) == MAX_CAPTION_CHARS
    assert _row(rows, huge)["caption_error"] == (
        f"caption truncated from {HUGE_CAPTION_CHARS // 36 * 36} to {MAX_CAPTION_CHARS} characters")
    assert _row(rows, null_caption)["caption"] == "bad \ufffd\ufffd bytes \ufffd"
    assert _row(rows, null_caption)["image_status"] == "ok"


def test_mistyped_columns_are_converted_with_the_bad_values_recorded(hostile):
    rows = _samples(hostile, "mistyped_columns")
    table = hostile["lake"].read_parquet("shards/mistyped_columns/samples.parquet")
    assert table.schema.field("caption").type == "string" and table.schema.field("width").type == "int64"
    assert table.schema.field("status").type == "string" and table.schema.field("height").type == "int64"
    bad_caption, bad_width = _picks(hostile, "mistyped_columns", "bad_caption", "bad_width")
    assert _row(rows, bad_caption)["caption"] == "caf\ufffd \ufffd"
    assert _row(rows, bad_caption)["caption_error"] == "caption is not valid UTF-8 (decoded with replacement)"
    assert _row(rows, bad_width)["width"] is None
    assert _row(rows, bad_width)["row_warnings"] == "width 'wide' is not an integer (set to null)"
    assert rows[0]["note"] == "\ufffd\ufffd" and "note is not valid UTF-8" in rows[0]["row_warnings"]
    assert sum(r["image_status"] == "ok" for r in rows) >= 15
    notes = _metadata(hostile, "mistyped_columns")["crawl_notes"]
    assert "column caption is binary, converted to string" in notes
    assert "column width is string, converted to int64" in notes


def test_parquet_keys_not_in_the_tar_are_missing_images(hostile):
    rows = _samples(hostile, "parquet_only_keys")
    for key in hostile["shards"]["parquet_only_keys"].touched:
        assert _row(rows, key)["image_status"] == "missing_image"
        assert _row(rows, key)["image_error"] == f"no image for key {key} in parquet_only_keys.tar"


def test_tar_keys_not_in_the_parquet_are_rows_of_their_own(hostile):
    rows = _samples(hostile, "tar_only_keys")
    orphans = {r["key"]: r for r in rows if r["image_status"] == "not_in_parquet"}
    a, b, c = _picks(hostile, "tar_only_keys", "row_removed", "other_row_removed", "in_subfolder")
    assert set(orphans) == {a, b, "88888888", f"sub/{c}"}
    assert orphans["88888888"]["caption"] == "a stray sample" and orphans["88888888"]["tar_member"] == "88888888.jpg"
    assert orphans[a]["image_error"] == (f"{a}.jpg, {a}.txt, {a}.json in tar_only_keys.tar: "
                                         f"key {a} has no usable row in tar_only_keys.parquet")
    assert all(r["parquet_row"] is None for r in orphans.values())
    assert _metadata(hostile, "tar_only_keys")["parquet_rows"] == len(rows) - 4


def test_bad_image_bytes_are_corrupt_images_with_the_reason(hostile):
    rows = _samples(hostile, "bad_images")
    zero, truncated, html, bomb_png, bomb_jpeg, warning_png = _picks(
        hostile, "bad_images", "zero", "truncated", "html", "bomb_png", "bomb_jpeg", "warning_png")
    expected = {zero: "zero-byte image", truncated: "image file is truncated",
                html: "unsupported format: text/HTML",
                bomb_png: "DecompressionBombError", bomb_jpeg: "DecompressionBombError",
                warning_png: "DecompressionBombWarning"}
    for key, reason in expected.items():
        assert _row(rows, key)["image_status"] == "corrupt_image"
        assert reason in _row(rows, key)["image_error"], (key, _row(rows, key)["image_error"])


def test_the_pixel_limit_holds_even_when_pillows_is_switched_off(monkeypatch):
    """Some libraries set Image.MAX_IMAGE_PIXELS = None; the header check still refuses the
    image before decoding it (decoding would allocate gigabytes, then fail on the data)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    for data in (png_claiming(30_000, 30_000), png_claiming(10_000, 10_000),
                 jpeg_claiming(_jpeg(), 30_000, 30_000)):
        error = check_image(data)
        assert error.startswith("DecompressionBombError: image claims") and "not decoded" in error
    side = int(MAX_IMAGE_PIXELS ** 0.5)
    assert check_image(png_claiming(side, side)) != check_image(png_claiming(side + 1, side + 1))


def test_an_image_over_the_byte_limit_is_never_read(hostile, tmp_path, monkeypatch):
    hostile["shards"]["one_sample"].write(tmp_path)
    monkeypatch.setattr(samples_module, "MAX_IMAGE_BYTES", 100)
    (row,) = read_shard(CrawlResource(root=str(tmp_path)), "one_sample").table.to_pylist()
    assert row["image_status"] == "corrupt_image"
    assert row["image_error"].endswith("bytes, over the 100-byte limit; not read")


def test_numbers_that_are_not_int64_become_nulls_with_a_note():
    values, notes, column_note = coerce_column(
        pa.chunked_array([pa.array(["12", " 7 ", "wide", "9" * 25, None])]), pa.int64(), "width")
    assert values.to_pylist() == [12, 7, None, None, None]
    assert column_note == "column width is string, converted to int64"
    assert notes[2:4] == ["width 'wide' is not an integer (set to null)",
                          f"width '{'9' * 25}' is not an integer (set to null)"]
    values, notes, _ = coerce_column(pa.chunked_array([pa.array([3.0, 2.5, float("nan")])]), pa.int64(), "height")
    assert values.to_pylist() == [3, None, None] and notes[0] is None and all(notes[1:])


def test_duplicate_invalid_keys_and_duplicate_members_are_recorded(hostile):
    rows = _samples(hostile, "duplicate_keys")
    twice, same_name, two_formats, null_status = _picks(
        hostile, "duplicate_keys", "twice", "same_name", "two_formats", "null_status")
    first, second = [r for r in rows if r["key"] == twice]
    assert first["image_status"] == "ok" and second["image_status"] == "duplicate_key"
    assert f"also row {first['parquet_row']}" in second["image_error"]
    invalid = [r for r in rows if r["image_status"] == "invalid_key"]
    assert [r["key"] for r in invalid] == [None, "", f"../{twice}"]
    assert _row(rows, null_status)["image_status"] == "invalid_status"
    assert _row(rows, null_status)["row_warnings"] == (f"duplicate_keys.tar holds {null_status}.jpg for this row, "
                                                      "whose status is None")
    # The first member of a name is the sample's; later ones are recorded, never mixed in.
    assert _row(rows, same_name)["image_status"] == "ok"
    assert _row(rows, two_formats)["tar_member"] == f"{two_formats}.jpg"
    extra = {r["tar_member"]: r for r in rows if r["image_status"] == "duplicate_image"}
    assert set(extra) == {f"{same_name}.jpg", f"{two_formats}.png"} and all(r["key"] is None for r in extra.values())


def test_a_one_sample_and_empty_shards(hostile):
    (row,) = _samples(hostile, "one_sample")
    assert row["image_status"] == "ok"
    assert _samples(hostile, "empty") == [] and _samples(hostile, "empty_files") == []
    assert "empty_files.tar unreadable after 0 members" in str(_metadata(hostile, "empty_files")["crawl_notes"])


@pytest.mark.parametrize("name", ["no_key", "no_status", "int_keys", "bool_status", "not_parquet"])
def test_a_parquet_that_cannot_give_rows_fails_naming_the_file(hostile, tmp_path, name):
    base = hostile["shards"]["one_sample"]
    hostile_crawl.write_unusable(base, tmp_path, name, hostile_crawl.unusable_parquets(base)[name])
    problem = {"no_key": "missing required column(s) ['key']", "no_status": "missing required column(s) ['status']",
               "int_keys": "column 'key' is int64, not text", "bool_status": "column 'status' is bool, not text",
               "not_parquet": "not a readable parquet file"}[name]
    with pytest.raises(ValueError) as error:
        read_shard(CrawlResource(root=str(tmp_path)), name)
    assert str(error.value).startswith(f"{tmp_path}/{name}.parquet: {problem}")


# --- downstream: every asset runs on every hostile shard --------------------------------------

def test_the_failing_shard_is_reported_and_the_others_go_on(hostile):
    assert f"for shard {FAILING_SHARD} failed" in hostile["failure"]
    assert f"{FAILING_SHARD}.parquet: missing required column(s) ['key']" in hostile["failure"]
    assert hostile["failure"].count("for shard") == 1 and "cross-shard run" not in hostile["failure"]


@pytest.mark.parametrize("shard", list(CASES))
def test_every_per_shard_asset_materialized_and_aligned_with_the_usable_samples(hostile, shard):
    instance, lake = hostile["instance"], hostile["lake"]
    for name in PER_SHARD:
        records = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey.from_user_string(name), asset_partitions=[shard]), limit=1).records
        assert records, (name, shard)
    samples = lake.read_parquet(f"shards/{shard}/samples.parquet")
    usable = samples.filter(pc.equal(samples.column("image_status"), "ok")).column("key").to_pylist()
    model_id = ClipModelResource().model_id
    keys = lake.read_parquet(f"{embeddings_dir(shard, model_id)}/keys.parquet").column("key").to_pylist()
    assert keys == usable and len(set(keys)) == len(keys)
    assert embedding_failures(lake, shard, model_id).num_rows == 0
    for name in ("language", "quality", "image_hashes", "toxicity", "caption_terms"):
        assert lake.read_parquet(score_path(shard, name)).column("key").to_pylist() == usable, name
    for name in ("clip_similarity", "nsfw", "watermark", "aesthetic"):
        assert lake.read_parquet(score_path(shard, name, model_id)).column("key").to_pylist() == keys, name


def test_cross_shard_assets_and_the_catalog_see_one_row_per_usable_sample(hostile):
    instance = hostile["instance"]
    for name in CROSS_SHARD:
        assert instance.get_latest_materialization_event(AssetKey.from_user_string(name)) is not None, name
    catalog = open_catalog(hostile["lake"].url, ClipModelResource().model_id)
    try:
        scored = catalog.query("SELECT shard, key FROM scores").to_pylist()
        crawl = catalog.query("SELECT count(*) FILTER (WHERE parquet_row IS NOT NULL) AS rows, "
                              "count(*) FILTER (WHERE image_status = 'ok') AS ok FROM samples").to_pylist()[0]
        # `clipsieve explain` of a key the crawl holds twice shows its usable row.
        (twice,) = _picks(hostile, "duplicate_keys", "twice")
        explained = catalog.query(read_sql("lineage/sample.sql"), {"key": twice}).to_pylist()
        assert [r["image_status"] for r in explained if r["shard"] == "duplicate_keys"] == ["ok", "duplicate_key"]
        assert explained[0]["image_status"] == "ok"
    finally:
        catalog.close()
    assert len(scored) == len({(r["shard"], r["key"]) for r in scored}) == crawl["ok"]
    parquet_rows = sum(pq.read_metadata(hostile["crawl"] / f"{s}.parquet").num_rows for s in CASES)
    assert crawl["rows"] == parquet_rows
    metrics = hostile["lake"].read_json("audits/safe/metrics.json")
    assert metrics["crawl"]["crawl_rows"] == parquet_rows and metrics["crawl"]["tar_only"] > 0


def _picks(hostile: dict, shard: str, *roles: str) -> list[str]:
    return [hostile["shards"][shard].picks[role] for role in roles]


def _metadata(hostile: dict, shard: str) -> dict:
    (record,) = hostile["instance"].fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("samples"), asset_partitions=[shard]), limit=1).records
    return {k: getattr(v, "value", v) for k, v in record.asset_materialization.metadata.items()}


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 10)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_webdataset_export_of_hostile_shards_takes_usable_rows_and_cleaned_captions(hostile, tmp_path):
    lake = hostile["lake"]
    members = lake.read_parquet("subsets/safe/members.parquet")
    (twice,) = _picks(hostile, "duplicate_keys", "twice")
    tars = export_webdataset(lake, CrawlResource(root=str(hostile["crawl"])), "safe", tmp_path / "out")
    exported = {}
    for tar in tars:
        with tarfile.open(tar) as archive:
            for member in archive.getmembers():
                assert "/" not in member.name and not member.name.startswith(".")
                exported[member.name] = archive.extractfile(member).read()
    assert sum(name.endswith(".txt") for name in exported) == members.num_rows
    # A key the crawl holds twice is exported once, from its usable row.
    assert twice in members.column("key").to_pylist() and f"{twice}.txt" in exported
    # Captions are the cleaned ones: UTF-8, at most 4096 characters.
    for name, payload in exported.items():
        if name.endswith(".txt"):
            assert len(payload.decode("utf-8")) <= 4096
