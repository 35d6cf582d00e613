"""Crawl images are opened only as JPEG, PNG or WebP, at a bounded cost, and read as
img2dataset reads them (EXIF orientation, alpha on white, 16-bit scaled to 8 bits)."""

import io
import tarfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from assets.crawl.images import MAX_ASPECT_RATIO, MAX_JPEG_SCANS, as_mode, check_image, open_image
from assets.crawl.pixels import decode
from assets.demo.sample_crawl import write_sample_crawl
from assets.samples import read_shard
from assets.scores.quality import quality_scores
from assets.subsets import POLICY_DIR, load_policies
from resources.catalog import open_catalog
from resources.crawl import CrawlResource
from resources.heads import Head


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def _picture(size=(48, 32)) -> Image.Image:
    rng = np.random.default_rng(0)
    gradient = np.linspace(0, 255, size[0], dtype=np.float32)[None, :, None]
    pixels = np.clip(gradient + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def test_a_looping_postscript_file_stored_as_jpg_never_reaches_ghostscript():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n{ } loop\n"
    started = time.perf_counter()
    assert check_image(eps) == "unsupported format: PostScript/EPS (crawl images are read as JPEG, PNG, WEBP only)"
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("fmt, name, mode", [("TIFF", "TIFF", "LAB"), ("GIF", "GIF", "P"), ("BMP", "BMP", "RGB"),
                                             ("TIFF", "TIFF", "F")])
def test_other_formats_are_refused_by_name(fmt, name, mode):
    image = _picture().convert(mode) if mode != "F" else Image.new("F", (8, 8), 0.5)
    error = check_image(_encoded(image, fmt))
    assert error is not None and error.startswith(f"unsupported format: {name}")
    with pytest.raises(ValueError, match=name):
        decode(_encoded(image, fmt), 64)


def test_a_jpeg_repeating_its_last_scan_is_refused_before_decoding():
    progressive = _encoded(_picture((256, 256)), "JPEG", progressive=True, quality=90)
    last_scan = progressive.rindex(b"\xff\xda")
    body, scan = progressive[:last_scan], progressive[last_scan:-2]
    bomb = body + scan * (MAX_JPEG_SCANS + 50) + b"\xff\xd9"
    assert check_image(progressive) is None
    started = time.perf_counter()
    error = check_image(bomb)
    assert error is not None and "scans, over the 100-scan limit" in error
    assert time.perf_counter() - started < 1.0


def test_an_extreme_aspect_ratio_is_refused_before_decoding():
    banner = _encoded(Image.new("L", (150_000, 1), 128), "PNG")
    assert len(banner) < 2000
    error = check_image(banner)
    assert error is not None and f"aspect ratio over {MAX_ASPECT_RATIO}" in error
    assert check_image(_encoded(Image.new("L", (MAX_ASPECT_RATIO, 1), 128), "PNG")) is None


def test_sixteen_bit_greyscale_reads_as_the_same_picture_at_eight_bits():
    grey = np.asarray(_picture().convert("L"), dtype=np.uint16)
    sixteen = Image.fromarray(grey * 257)  # uint16: mode I;16
    png16 = _encoded(sixteen, "PNG")
    assert open_image(png16).mode.startswith("I")
    eight = np.asarray(decode(_encoded(Image.fromarray(grey.astype(np.uint8), "L"), "PNG"), 64), dtype=int)
    read = np.asarray(decode(png16, 64), dtype=int)
    assert np.abs(read - eight).max() <= 1 and read.mean() > 40  # not flat white or black


def test_exif_orientation_is_applied():
    picture = _picture()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rotated = np.asarray(decode(_encoded(picture, "JPEG", quality=95, exif=exif.tobytes()), 1000))
    plain = decode(_encoded(picture, "JPEG", quality=95), 1000)  # the same pixels, no orientation tag
    upright = np.asarray(plain.transpose(Image.Transpose.ROTATE_270))
    assert rotated.shape == upright.shape == (48, 32, 3)
    assert np.array_equal(rotated, upright)


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 8, 16))
    read = np.asarray(as_mode(open_image(_encoded(rgba, "PNG")), "RGB"))
    assert tuple(read[0, 0]) == (0, 0, 255) and tuple(read[0, 15]) == (255, 255, 255)
    webp = np.asarray(decode(_encoded(rgba, "WEBP", lossless=True), 64))
    assert tuple(webp[0, 15]) == (255, 255, 255)


def test_an_image_that_does_not_decode_is_a_hash_row_with_its_reason_not_a_failed_shard():
    from assets.scores.image_hashes import hash_images

    lab_tiff = _encoded(_picture().convert("LAB"), "TIFF")
    good = _encoded(_picture(), "JPEG")
    hashes = hash_images([("a", good), ("lab", lab_tiff), ("b", good)])
    assert hashes.keys == ["a", "lab", "b"] and len(set(hashes.digests)) == 2
    assert hashes.phashes[0] == hashes.phashes[2] is not None and hashes.phashes[1] is None
    assert hashes.thumbnails[1] is None and hashes.errors[1].startswith("unsupported format: TIFF")


def test_the_pool_leaves_out_a_shard_without_hashes_and_names_it(lake, tmp_path):
    import shutil

    from resources.clip_model import DEMO_CHECKPOINT, DEMO_MODEL, model_id
    from resources.lake import LakeResource, pool_shards

    copy = tmp_path / "lake"
    shutil.copytree(lake.url, copy, ignore=shutil.ignore_patterns("_dagster"))
    (copy / "shards" / "00002" / "scores" / "image_hashes.parquet").unlink()
    pooled, left_out = pool_shards(LakeResource(root=str(copy)), model_id(DEMO_MODEL, DEMO_CHECKPOINT))
    assert left_out == {"00002": "no scores/image_hashes"}
    shards = set(pooled)
    assert "00002" not in shards and len(shards) == 7
    catalog = open_catalog(str(copy), model_id(DEMO_MODEL, DEMO_CHECKPOINT))
    try:  # the scored pool every subset and audit reads leaves it out too, and says so
        pooled = catalog.query("SELECT DISTINCT shard FROM scores ORDER BY shard").column("shard").to_pylist()
        assert pooled == [s for s in sorted(shards)] and catalog.left_out == left_out
    finally:
        catalog.close()


def test_gif_and_bmp_members_get_rows_of_their_own(tmp_path):
    write_sample_crawl(tmp_path, 1, 40, seed=2)
    rows = pq.read_table(tmp_path / "00000.parquet").to_pylist()
    gif_key = next(r["key"] for r in rows if r["status"] == "success")
    members = []
    with tarfile.open(tmp_path / "00000.tar") as tar:
        for member in tar.getmembers():
            data = tar.extractfile(member).read()
            if member.name == f"{gif_key}.jpg":  # this sample's image is a GIF now
                members.append((f"{gif_key}.gif", _encoded(_picture().convert("P"), "GIF")))
            else:
                members.append((member.name, data))
    members.append(("stray.bmp", _encoded(_picture(), "BMP")))
    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    table = read_shard(CrawlResource(root=str(tmp_path)), "00000").table.to_pylist()
    gif = next(r for r in table if r["key"] == gif_key)
    assert gif["image_status"] == "corrupt_image" and gif["image_error"].startswith("unsupported format: GIF")
    assert any(r["tar_member"] == "stray.bmp" and r["image_status"] == "not_in_parquet" for r in table)


def test_empty_or_blank_captions_have_no_words():
    samples = pa.table({"key": ["a", "b", "c", "d"], "shard": ["0"] * 4, "caption": ["", "   ", None, " two words "],
                        "width": [10] * 4, "height": [10] * 4})
    assert quality_scores(samples).column("caption_words").to_pylist() == [0, 0, 0, 2]


def test_a_bad_file_in_the_policy_folder_is_skipped_by_name_and_never_followed(tmp_path):
    (tmp_path / "good.sql").write_text((POLICY_DIR / "laion400m.sql").read_text())
    (tmp_path / "Bad-Name.sql").write_text("SELECT key, shard FROM scores")
    (tmp_path / "folder.sql").mkdir()
    (tmp_path / "latin1.sql").write_bytes("SELECT 'caf\xe9'".encode("latin-1"))
    secret = tmp_path.parent / f"{tmp_path.name}-secret.txt"
    secret.write_text("TOP SECRET first line")
    (tmp_path / "linked.sql").symlink_to(secret)
    skipped: dict[str, str] = {}
    with pytest.warns(UserWarning, match="skipping policy file"):
        policies = load_policies(tmp_path, skipped)
    assert [p.name for p in policies] == ["good"]
    assert set(skipped) == {"Bad-Name.sql", "folder.sql", "latin1.sql", "linked.sql"}
    assert not any("SECRET" in reason for reason in skipped.values())


def test_a_malformed_head_file_is_a_named_error(tmp_path):
    path = tmp_path / "head.safetensors"
    save_file({"layers.1.weight": torch.zeros(1, 4)}, str(path))
    with pytest.raises(ValueError, match="head .*head.safetensors is not a head"):
        Head.load(path)


def test_a_crawl_column_whose_type_differs_between_shards_still_reads_as_one_samples_view(tmp_path):
    from resources.lake import LakeResource, samples_path

    crawl, lake = tmp_path / "crawl", LakeResource(root=str(tmp_path / "lake"))
    write_sample_crawl(crawl, 3, 40, seed=4)
    extra = {"00000": pa.array([{"source": "a", "rank": 1}] * 40),  # a struct here,
             "00001": pa.array(["plain text"] * 40),  # text here,
             "00002": pa.array([[1, 2]] * 40)}  # a list here
    for shard, column in extra.items():
        table = pq.read_table(crawl / f"{shard}.parquet")
        pq.write_table(table.append_column("provenance", column), crawl / f"{shard}.parquet")
        lake.write_parquet(samples_path(shard), read_shard(CrawlResource(root=str(crawl)), shard).table)
    catalog = open_catalog(lake.url, "no-model")
    try:
        rows = catalog.query("SELECT shard, any_value(provenance) AS provenance FROM samples "
                             "GROUP BY shard ORDER BY shard").to_pylist()
    finally:
        catalog.close()
    assert [r["provenance"] for r in rows] == ['{"source": "a", "rank": 1}', "plain text", "[1, 2]"]


def test_a_large_progressive_jpeg_with_many_scans_is_refused_by_its_scan_pixels():
    from assets.crawl.images import MAX_JPEG_SCAN_PIXELS

    progressive = _encoded(Image.new("RGB", (6000, 6000), (120, 80, 40)), "JPEG", progressive=True)
    last_scan = progressive.rindex(b"\xff\xda")
    scans = MAX_JPEG_SCAN_PIXELS // 6000**2 + 1 - progressive.count(b"\xff\xda")
    bomb = progressive[:last_scan] + progressive[last_scan:-2] * (scans + 1) + b"\xff\xd9"
    assert len(bomb) < 400_000 and bomb.count(b"\xff\xda") <= MAX_JPEG_SCANS
    started = time.perf_counter()
    error = check_image(bomb)
    assert error is not None and "scan-pixel limit" in error and time.perf_counter() - started < 1.0


def test_an_image_over_the_time_budget_is_refused_and_the_worker_replaced():
    from assets.crawl.image_worker import ImageCheckWorker

    slow = _encoded(Image.new("RGB", (4000, 4000), (10, 200, 30)), "JPEG", progressive=True)
    good = _encoded(_picture(), "JPEG")
    with ImageCheckWorker(seconds=0.01) as worker:
        assert "not checked within the 0.01 s per-image budget" in worker.check(slow)
        worker.seconds = 30
        assert worker.check(good) is None  # a fresh worker took over
        assert worker.check(b"not an image").startswith("unsupported format")


def test_a_decoder_crash_is_the_images_reason_not_a_failed_step():
    import os
    import signal

    from assets.crawl.image_worker import ImageCheckWorker

    good = _encoded(_picture(), "JPEG")
    with ImageCheckWorker(seconds=30) as worker:
        assert worker.check(good) is None
        os.kill(worker.pid, signal.SIGSEGV)  # what a decoder bug does to its process
        assert "decoder crashed" in worker.check(good)
        assert worker.check(good) is None


def test_outputs_of_a_shards_old_crawl_files_never_meet_its_new_samples(lake, crawl, tmp_path):
    import shutil

    from assets.samples import write_samples
    from resources.clip_model import DEMO_CHECKPOINT, DEMO_MODEL, model_id
    from resources.lake import LakeResource, pool_shards

    copy_crawl, copy_lake = tmp_path / "crawl", tmp_path / "lake"
    shutil.copytree(crawl, copy_crawl)
    shutil.copytree(lake.url, copy_lake, ignore=shutil.ignore_patterns("_dagster"))
    crawl_resource, lake_resource = CrawlResource(root=str(copy_crawl)), LakeResource(root=str(copy_lake))
    model = model_id(DEMO_MODEL, DEMO_CHECKPOINT)
    # The same files again: nothing moves.
    _, retired = write_samples(crawl_resource, lake_resource, "00003", crawl_resource.fingerprint("00003"))
    assert retired is None and "00003" in pool_shards(lake_resource, model)[0]
    # The shard rewritten under its name (one row fewer): its embeddings and scores are of
    # other images, so they leave before the new samples land, and the pool names the shard.
    table = pq.read_table(copy_crawl / "00003.parquet")
    pq.write_table(table.slice(0, table.num_rows - 1), copy_crawl / "00003.parquet")
    result, retired = write_samples(crawl_resource, lake_resource, "00003", crawl_resource.fingerprint("00003"))
    assert retired is not None and (copy_lake / "retired/shards/00003/scores/image_hashes.parquet").exists()
    assert pc.count(result.table.column("parquet_row")).as_py() == table.num_rows - 1
    pooled, left_out = pool_shards(lake_resource, model)
    assert "00003" not in pooled and left_out["00003"].startswith("no embeddings, scores/")
    assert lake_resource.read_parquet("shards/00003/samples.parquet").equals(result.table)
