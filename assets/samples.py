"""samples: one row per crawl parquet row, failed downloads included, joined to the tar.

The crawl's columns are carried through unchanged; clipsieve adds
    shard        the partition key
    tar_member   name of the sample's image in the tar (null if none)
    image_bytes  size of that image
    image_status "ok", the img2dataset status of a failed row, "missing_image" or "corrupt_image"
    image_error  why the image is unusable, or null
Only rows with image_status "ok" go on to the model. Every image is decoded once here
(at reduced size with JPEG draft mode) so corrupt bytes are found and named before any
model work.
"""

import io
import os
import tarfile
import warnings

import pyarrow as pa
import pyarrow.compute as pc
from dagster import AssetExecutionContext, AssetSpec, DataVersion, MaterializeResult, MetadataValue, asset
from PIL import Image

from assets.scores.common import for_each_shard
from orchestration.partitions import SHARD_BATCHES, shard_partitions
from resources.crawl import IMAGE_EXTENSIONS, CrawlResource
from resources.lake import LakeResource, samples_path

REQUIRED_COLUMNS = ("key", "status")
CODE_VERSION = "1"

# The crawl shards themselves: files written by img2dataset, observed, never materialized here.
crawl_shard = AssetSpec(
    "crawl_shard",
    partitions_def=shard_partitions,
    group_name="crawl",
    description="An img2dataset shard: NNNNN.tar, NNNNN.parquet and NNNNN_stats.json in the crawl folder.",
)


def check_image(data: bytes) -> str | None:
    """None if `data` decodes as an image, else the reason it does not."""
    if not data:
        return "zero-byte image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image.draft("RGB", (64, 64))  # JPEG: decode at 1/8 scale, enough to find damage
                image.load()
    except Exception as error:  # noqa: BLE001 - any decoder failure is a property of the data
        return f"{type(error).__name__}: {error}"
    return None


def read_samples(crawl: CrawlResource, shard: str) -> pa.Table:
    """The shard's parquet rows with their tar members, checked and statused."""
    table = crawl.read_parquet(shard)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{crawl.file(shard, '.parquet')}: missing required column(s) {missing}")
    keys = [str(k) for k in table.column("key").to_pylist()]
    statuses = table.column("status").to_pylist()

    # Checked as they stream by; only (member, size, error) is kept, so memory stays flat.
    images: dict[str, tuple[str, int, str | None]] = {}
    captions: dict[str, str] = {}
    tar_error = None
    try:
        for name, data in crawl.iter_tar(shard):
            stem, _, extension = os.path.basename(name).rpartition(".")
            if extension.lower() in IMAGE_EXTENSIONS:
                images[stem] = (name, len(data), check_image(data))
            elif extension == "txt":
                captions[stem] = data.decode("utf-8", errors="replace")
    except (tarfile.TarError, OSError, EOFError) as error:
        # Keep what was read before the damage; the rest is marked below.
        tar_error = f"tar unreadable after {len(images)} images: {type(error).__name__}: {error}"

    tar_member, image_bytes, image_status, image_error = [], [], [], []
    for key, status in zip(keys, statuses):
        entry = images.get(key)
        if status != "success":
            member, size, state, reason = None, None, str(status), None
        elif entry is None:
            member, size, state = None, None, "missing_image"
            reason = tar_error or f"no image for key {key} in {shard}.tar"
        else:
            member, size, reason = entry
            state = "ok" if reason is None else "corrupt_image"
        tar_member.append(member)
        image_bytes.append(size)
        image_status.append(state)
        image_error.append(reason)

    if "error_message" in table.column_names:
        # Failed downloads keep img2dataset's own reason.
        failed = [s != "success" for s in statuses]
        image_error = [
            msg if f else e for f, msg, e in zip(failed, table.column("error_message").to_pylist(), image_error)
        ]
    if "caption" not in table.column_names:
        table = table.append_column("caption", pa.array([captions.get(k) for k in keys], pa.string()))
    table = table.set_column(table.column_names.index("key"), "key", pa.array(keys, pa.string()))
    extra = {
        "shard": pa.array([shard] * len(keys), pa.string()),
        "tar_member": pa.array(tar_member, pa.string()),
        "image_bytes": pa.array(image_bytes, pa.int64()),
        "image_status": pa.array(image_status, pa.string()),
        "image_error": pa.array(image_error, pa.string()),
    }
    for name, column in extra.items():
        if name in table.column_names:
            table = table.drop_columns([name])
        table = table.append_column(name, column)
    return table


@asset(
    partitions_def=shard_partitions,
    deps=[crawl_shard],
    group_name="per_shard",
    code_version=CODE_VERSION,
    compute_kind="pyarrow",
    backfill_policy=SHARD_BATCHES,
)
def samples(context: AssetExecutionContext, crawl: CrawlResource, lake: LakeResource) -> MaterializeResult:
    """Every input row of the shard, with tar member and image status; nothing dropped."""
    fingerprints = {}

    def one(shard: str) -> dict:
        fingerprints[shard] = crawl.fingerprint(shard)
        table = read_samples(crawl, shard)
        lake.write_parquet(samples_path(shard), table)
        statuses = pc.value_counts(table.column("image_status")).to_pylist()
        return {
            "crawl_fingerprint": fingerprints[shard],
            "rows": table.num_rows,
            "usable_images": sum(s["counts"] for s in statuses if s["values"] == "ok"),
            **{f"image_status/{s['values']}": s["counts"] for s in statuses},
            "path": lake.path(samples_path(shard)),
        }

    result = for_each_shard(context, one)
    # The data version follows the crawl files, so a rewritten shard makes everything below
    # it stale (a batch of shards shares one version, made of all their fingerprints).
    version = "-".join(fingerprints[s] for s in sorted(fingerprints))
    metadata = dict(result.metadata)
    if len(fingerprints) > 1:
        metadata["crawl_fingerprints"] = MetadataValue.json(fingerprints)
    return MaterializeResult(data_version=DataVersion(f"{CODE_VERSION}-{version}"), metadata=metadata)
