"""The sample crawl: a deterministic img2dataset-format crawl with planted defects.

Output, as img2dataset writes it in webdataset mode:
    OUT/00000.tar            <key>.jpg, <key>.txt, <key>.json per downloaded sample, shuffled
    OUT/00000.parquet        one row per input URL, failed downloads included
    OUT/00000_stats.json     count, successes, failed_to_download, failed_to_resize, status_dict
    OUT/00000_candidates.parquet  key, candidate, source: more captions per downloaded image, as a
                             captioning model would write them (source "captioner"): the true
                             caption and three hallucinations of it (HALLUCINATIONS)
    OUT/ground_truth.parquet key, shard, defect (null = clean), group, duplicate_of,
                             text_in_image (rendered text: a sign or a watermark)
    OUT/candidate_truth.parquet  key, shard, candidate, kind: "true", a hallucination kind, or
                             for an alt-text that does not describe the image, its defect

Every planted defect class gets the same share of the crawl (DEFECT_RATE, at least 2%),
so each filter's precision and recall can be measured against ground truth. TEXT_IN_IMAGE_RATE
of the clean images also carry a sign with words (not a defect for curation; preference
pairs leave such images out).
"""


import hashlib
import io
import json
import math
import os
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from assets.demo import synthetic

DEFECTS = (
    "mismatched_caption",
    "junk_caption",
    "exact_duplicate",
    "near_duplicate",
    "watermark",
    "unsafe",
    "toxic_caption",
    "non_english",
    "small_image",
    "extreme_aspect",
    "corrupt_image",
    "failed_download",
)
DEFECT_RATE = 0.03
TEXT_IN_IMAGE_RATE = 0.03
# Defects whose alt-text does not describe the image: the true caption is the captioner's.
UNTRUE_ALT_TEXT = ("mismatched_caption", "junk_caption", "toxic_caption", "non_english")
# Captions that name a woman get mismatched captions this many times as often as the
# rest: the planted case of a filter removing one group's samples at a higher rate.
MISMATCH_RATE_RATIO_WOMAN = 3.0
_DOWNLOAD_ERRORS = (
    "HTTP Error 404: Not Found",
    "HTTP Error 403: Forbidden",
    "<urlopen error [Errno -2] Name or service not known>",
    "The read operation timed out",
)


@dataclass
class PlannedSample:
    shard: int
    index: int
    scene: synthetic.Scene
    defect: str | None = None
    duplicate_of: int | None = None  # global index of the original, for duplicates


def shard_name(shard: int) -> str:
    return f"{shard:05d}"


def _key(shard: int, index: int, digits: int) -> str:
    return f"{shard:05d}{index:0{digits}d}"


def plan_crawl(shards: int, samples_per_shard: int, seed: int,
               near_duplicate_share: float = DEFECT_RATE) -> list[PlannedSample]:
    """Decide every sample's scene and defect; rendering happens later, per sample.

    `near_duplicate_share` plants that share of near duplicates instead of DEFECT_RATE's
    (about 0.3 is what Webster et al. 2023 found in LAION-2B)."""
    rng = np.random.default_rng([seed, 0])
    total = shards * samples_per_shard
    plan = [
        PlannedSample(shard=g // samples_per_shard, index=g % samples_per_shard, scene=synthetic.random_scene(rng))
        for g in range(total)
    ]
    per_defect = math.ceil(DEFECT_RATE * total)
    if per_defect * len(DEFECTS) > total * 0.6:
        raise ValueError(f"crawl too small to plant every defect: {total} samples")
    near_duplicates = math.ceil(near_duplicate_share * total)
    if near_duplicate_share < 0 or per_defect * (len(DEFECTS) - 1) + near_duplicates > total * 0.7:
        raise ValueError(f"near_duplicate_share {near_duplicate_share} leaves too few clean originals "
                         f"among {total} samples (at most about 0.35)")
    free = np.ones(total, dtype=bool)

    def take(count: int, eligible: np.ndarray) -> np.ndarray:
        chosen = rng.choice(np.flatnonzero(eligible & free), size=count, replace=False)
        free[chosen] = False
        return np.sort(chosen)

    everything = np.ones(total, dtype=bool)
    # Exact counts, so the planted ratio holds in every crawl: rate_woman = ratio * rate_rest.
    woman = np.array([s.scene.person == "woman" for s in plan])
    rate_rest = per_defect / (MISMATCH_RATE_RATIO_WOMAN * woman.sum() + (~woman).sum())
    women_mismatched = min(int(woman.sum()), round(MISMATCH_RATE_RATIO_WOMAN * rate_rest * woman.sum()))
    for g in np.concatenate([take(women_mismatched, woman), take(per_defect - women_mismatched, ~woman)]):
        plan[g].defect = "mismatched_caption"
    # Duplicates sit in the later part of the crawl so an earlier original always exists.
    late = np.arange(total) >= total // 5
    for defect in DEFECTS:
        if defect == "mismatched_caption":
            continue
        count = near_duplicates if defect == "near_duplicate" else per_defect
        for g in take(count, late if defect.endswith("duplicate") else everything):
            plan[g].defect = defect
    # Signs on some clean images, drawn from a stream of their own: the defects stay as they were.
    signs = np.random.default_rng([seed, 3])
    clean = np.flatnonzero([s.defect is None for s in plan])
    for g in signs.choice(clean, size=min(len(clean), math.ceil(TEXT_IN_IMAGE_RATE * total)), replace=False):
        plan[g].scene = synthetic.with_motif(plan[g].scene, "text")
    # Originals of duplicates: clean samples before the copy, possibly in another shard.
    clean_before = np.array([s.defect is None for s in plan])
    for g, sample in enumerate(plan):
        if sample.defect in ("exact_duplicate", "near_duplicate"):
            original = int(rng.choice(np.flatnonzero(clean_before[:g])))
            sample.duplicate_of = original
            sample.scene = plan[original].scene
    return plan


@dataclass
class RenderedSample:
    key: str
    url: str
    uid: str
    caption: str
    image: bytes | None
    width: int | None
    height: int | None
    error_message: str | None


def _sample_rng(seed: int, g: int) -> np.random.Generator:
    return np.random.default_rng([seed, 1, g])


def _image_size(defect: str | None, rng: np.random.Generator, image_size: int | None = None) -> tuple[int, int]:
    if defect == "small_image":
        return int(rng.integers(12, 29)), int(rng.integers(12, 29))
    if defect == "extreme_aspect":
        long_side = int(rng.integers(200, 257))
        short_side = int(long_side / rng.uniform(3.6, 6.0))
        return (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
    width, height = int(rng.integers(112, 193)), int(rng.integers(112, 193))
    # img2dataset's default output: every image resized to image_size x image_size.
    return (image_size, image_size) if image_size else (width, height)


def _corrupt(data: bytes, rng: np.random.Generator) -> bytes:
    kind = int(rng.integers(3))
    if kind == 0:  # truncated transfer
        return data[: len(data) * 2 // 5]
    if kind == 1:  # an error page served with an image URL
        return b"<html><body><h1>404 Not Found</h1></body></html>"
    return rng.bytes(len(data))  # garbage


def render_sample(plan: list[PlannedSample], g: int, seed: int, digits: int,
                  cache: dict[int, tuple[bytes, int, int]], cache_for: set[int],
                  image_size: int | None = None) -> RenderedSample:
    """Render sample `g` of the plan: caption, JPEG bytes (or none) and its size.

    Originals of duplicates (`cache_for`) are kept in `cache` for their later copies.
    """
    sample = plan[g]
    rng = _sample_rng(seed, g)
    key = _key(sample.shard, sample.index, digits)
    url = f"http://images.sample-crawl.invalid/{sample.shard:05d}/{g:08d}-{rng.integers(1 << 32):08x}.jpg"
    uid = hashlib.md5(url.encode()).hexdigest()
    scene = sample.scene
    defect = sample.defect

    if defect == "mismatched_caption":
        other = replace(synthetic.different_scene(scene, rng), person=scene.person)
        caption = synthetic.english_caption(other, rng)
    elif defect == "junk_caption":
        caption = synthetic.junk_caption(rng)
    elif defect == "toxic_caption":
        caption = synthetic.toxic_caption(scene, rng)
    elif defect == "non_english":
        _, caption = synthetic.foreign_caption(scene, rng)
    else:
        caption = synthetic.english_caption(scene, rng)

    if defect == "failed_download":
        return RenderedSample(key, url, uid, caption, None, None, None, str(rng.choice(_DOWNLOAD_ERRORS)))

    if defect == "exact_duplicate":
        data, width, height = cache[sample.duplicate_of]
    elif defect == "near_duplicate":
        original, width, height = cache[sample.duplicate_of]
        image = Image.open(io.BytesIO(original)).convert("RGB")
        # A re-upload: trimmed a little, rescaled, brightened or darkened, recompressed.
        dx, dy = int(width * rng.uniform(0.01, 0.03)), int(height * rng.uniform(0.01, 0.03))
        image = image.crop((dx, dy, width - dx, height - dy))
        scale = rng.uniform(0.8, 1.2)
        width, height = int(width * scale * rng.uniform(0.97, 1.03)), int(height * scale)
        image = image.resize((width, height), Image.BILINEAR)
        gain = rng.uniform(0.95, 1.05)
        image = image.point(lambda v: min(255, int(v * gain)))
        data = synthetic.jpeg_bytes(image, quality=int(rng.integers(65, 86)))
    else:
        width, height = _image_size(defect, rng, image_size)
        motif = {"watermark": "watermark", "unsafe": "unsafe"}.get(defect or "", scene.motif)
        image = synthetic.render(synthetic.with_motif(scene, motif), width, height, rng)
        data = synthetic.jpeg_bytes(image, quality=int(rng.integers(85, 96)))
    if g in cache_for:
        cache[g] = (data, width, height)
    if defect == "corrupt_image":
        data = _corrupt(data, rng)
    return RenderedSample(key, url, uid, caption, data, width, height, None)


def candidate_captions(plan: list[PlannedSample], g: int, seed: int, alt_text: str) -> list[tuple[str, str]]:
    """(candidate, kind) for sample `g`: its true caption (the alt-text, where that describes
    the image) and a hallucination of each kind, in a shuffled order."""
    rng = np.random.default_rng([seed, 5, g])
    scene = plan[g].scene
    true = synthetic.english_caption(scene, rng) if plan[g].defect in UNTRUE_ALT_TEXT else alt_text
    made_up = synthetic.hallucinations(scene, true, rng)
    rows = [(true, "true")] + [(made_up[kind], kind) for kind in synthetic.HALLUCINATIONS]
    return [rows[i] for i in rng.permutation(len(rows))]


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            info.mtime = 0  # deterministic bytes for a given seed
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


_PARQUET_SCHEMA = pa.schema([
    ("url", pa.string()), ("caption", pa.string()), ("uid", pa.string()), ("key", pa.string()),
    ("status", pa.string()), ("error_message", pa.string()),
    ("width", pa.int64()), ("height", pa.int64()),
    ("original_width", pa.int64()), ("original_height", pa.int64()),
    ("exif", pa.string()), ("sha256", pa.string()),
])


CANDIDATE_SCHEMA = pa.schema([("key", pa.string()), ("candidate", pa.string()), ("source", pa.string())])


# Written first into a folder the sample crawl fills: its own folder, free to rewrite.
MARKER = ".clipsieve-sample-crawl"


def claim_folder(out: Path) -> None:
    """Make `out` the sample crawl's folder, or refuse: a folder holding anything but an
    earlier sample crawl (a real crawl, say) is never written into."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a folder for the sample crawl")
    if out.is_dir() and not (out / MARKER).exists() and any(out.iterdir()):
        raise ValueError(f"{out} holds files the sample crawl did not write (a real crawl?): refusing to write "
                         "into it; give an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by clipsieve sample-crawl: it may rewrite this folder\n")


def write_sample_crawl(out: str | Path, shards: int, samples_per_shard: int, seed: int,
                       image_size: int | None = None, near_duplicate_share: float = DEFECT_RATE) -> dict:
    """Write the crawl to `out`; return a summary (shards, samples, defect counts).

    `image_size` renders clean images at that square size (img2dataset's default output is
    256 x 256) instead of 112-192 px sides; `near_duplicate_share` plants that share of
    near duplicates (see plan_crawl)."""
    if not 1 <= samples_per_shard <= 99_999:
        raise ValueError("samples_per_shard must be between 1 and 99999")
    out = Path(out)
    claim_folder(out)
    digits = max(4, len(str(samples_per_shard - 1)))
    plan = plan_crawl(shards, samples_per_shard, seed, near_duplicate_share)
    cache: dict[int, tuple[bytes, int, int]] = {}
    originals = {s.duplicate_of for s in plan if s.duplicate_of is not None}
    truth_rows, candidate_truth = [], []
    for shard in range(shards):
        rows, members, candidates = [], [], []
        for g in range(shard * samples_per_shard, (shard + 1) * samples_per_shard):
            rendered = render_sample(plan, g, seed, digits, cache, originals, image_size)
            ok = rendered.image is not None
            row = {
                "url": rendered.url, "caption": rendered.caption, "uid": rendered.uid, "key": rendered.key,
                "status": "success" if ok else "failed_to_download",
                "error_message": rendered.error_message,
                "width": rendered.width, "height": rendered.height,
                "original_width": rendered.width, "original_height": rendered.height,
                "exif": None,
                "sha256": hashlib.sha256(rendered.image).hexdigest() if ok else None,
            }
            rows.append(row)
            if ok:
                members.append([
                    (f"{rendered.key}.jpg", rendered.image),
                    (f"{rendered.key}.txt", rendered.caption.encode()),
                    (f"{rendered.key}.json", json.dumps(row).encode()),
                ])
            sample = plan[g]
            truth_rows.append({
                "key": rendered.key, "shard": shard_name(shard), "defect": sample.defect,
                "group": sample.scene.person,
                "duplicate_of": None if sample.duplicate_of is None else _key(
                    plan[sample.duplicate_of].shard, plan[sample.duplicate_of].index, digits),
                "text_in_image": sample.scene.motif == "text" or sample.defect == "watermark",
            })
            if ok:
                made = candidate_captions(plan, g, seed, rendered.caption)
                candidates += [{"key": rendered.key, "candidate": text, "source": "captioner"} for text, _ in made]
                kinds = dict(made)
                if rendered.caption not in kinds:
                    kinds[rendered.caption] = sample.defect
                candidate_truth += [{"key": rendered.key, "shard": shard_name(shard), "candidate": text, "kind": kind}
                                    for text, kind in kinds.items()]
        # img2dataset writes tar members in completion order, not key order.
        order = np.random.default_rng([seed, 2, shard]).permutation(len(members))
        name = shard_name(shard)
        _atomic_write(out / f"{name}.tar", _tar_bytes([m for i in order for m in members[i]]))
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=_PARQUET_SCHEMA), sink)
        _atomic_write(out / f"{name}.parquet", sink.getvalue())
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(candidates, schema=CANDIDATE_SCHEMA), sink)
        _atomic_write(out / f"{name}_candidates.parquet", sink.getvalue())
        successes = sum(r["status"] == "success" for r in rows)
        status_dict: dict[str, int] = {"success": successes}
        for r in rows:
            if r["error_message"]:
                status_dict[r["error_message"]] = status_dict.get(r["error_message"], 0) + 1
        stats = {
            "count": len(rows), "successes": successes, "failed_to_download": len(rows) - successes,
            "failed_to_resize": 0, "duration": 0.0, "status_dict": status_dict,
        }
        # The stats file is written last: its presence marks the shard complete.
        _atomic_write(out / f"{name}_stats.json", json.dumps(stats, indent=2).encode())
    truth = pa.Table.from_pylist(truth_rows, schema=pa.schema([
        ("key", pa.string()), ("shard", pa.string()), ("defect", pa.string()),
        ("group", pa.string()), ("duplicate_of", pa.string()), ("text_in_image", pa.bool_()),
    ]))
    sink = io.BytesIO()
    pq.write_table(truth, sink)
    _atomic_write(out / "ground_truth.parquet", sink.getvalue())
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(candidate_truth, schema=pa.schema([
        ("key", pa.string()), ("shard", pa.string()), ("candidate", pa.string()), ("kind", pa.string())])), sink)
    _atomic_write(out / "candidate_truth.parquet", sink.getvalue())
    defect_counts = {d: sum(r["defect"] == d for r in truth_rows) for d in DEFECTS}
    return {
        "shards": shards,
        "samples": len(truth_rows),
        "clean": sum(r["defect"] is None for r in truth_rows),
        "defects": defect_counts,
    }
