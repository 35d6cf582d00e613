"""Exports of the preference pairs in the format TRL's DPOTrainer reads (`clipsieve export-pairs`).

Each row is one pair: `prompt` (the instruction the captions answer), `chosen`, `rejected`, and
`images`, a one-element list referring to the crawl's image (key, shard, tar member, url); the
pair's similarities, margin, ptext and the candidates' sources ride along for lineage.
    pairs.jsonl, pairs.parquet   every pair, the image by reference
    webdataset (with a crawl)    NNNNN.tar of <stem>.jpg (the original bytes) + <stem>.json (the
                                 row), one sample per pair, so a loader needs no lookups; the
                                 image of an image with three pairs is stored three times
"""

import io
import json
import os
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from assets.export import unique_stems
from resources.catalog import Catalog, read_sql
from resources.crawl import IMAGE_EXTENSIONS, CrawlResource
from resources.safe_paths import check_member_name, check_shard_name

DEFAULT_PROMPT = "Describe the image."


def pair_rows(catalog: Catalog, prompt: str = DEFAULT_PROMPT) -> pa.Table:
    """Every pair of the pool as an export row (sql/export/pairs.sql)."""
    if not catalog.has_view("preference_pairs"):
        raise ValueError("the lake has no preference pairs: materialize preference_pairs first "
                         f"({catalog.missing.get('preference_pairs', 'no pairs.parquet')})")
    return catalog.query(read_sql("export/pairs.sql"), {"prompt": prompt})


def export_files(rows: pa.Table, out: Path) -> list[Path]:
    """pairs.jsonl and pairs.parquet in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    jsonl, parquet = out / "pairs.jsonl", out / "pairs.parquet"
    with open(jsonl, "w", encoding="utf-8") as f:
        for row in rows.to_pylist():
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    pq.write_table(rows, parquet)
    return [jsonl, parquet]


def export_webdataset(rows: pa.Table, crawl: CrawlResource, out: Path, samples_per_shard: int = 10_000) -> list[Path]:
    """One webdataset sample per pair: the image's original bytes and the row as JSON."""
    records = rows.to_pylist()
    stems = unique_stems(sorted({(r["shard"], r["key"]) for r in records}))
    by_shard: dict[str, list[dict]] = {}
    for record in records:
        by_shard.setdefault(record["shard"], []).append(record)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    buffer: list[tuple[str, str, bytes, bytes]] = []  # stem, image extension, image, json

    def flush() -> None:
        if buffer:
            written.append(_write_tar(out / f"{len(written):05d}.tar", buffer))
            buffer.clear()

    for shard in sorted(by_shard):
        members = {r["images"][0]["tar_member"]: r["key"] for r in by_shard[shard]}
        images: dict[str, tuple[str, bytes]] = {}
        try:
            for name, data in crawl.iter_tar(check_shard_name(shard), wanted=set(members)):
                extension = name.rpartition(".")[2].lower()
                images[members[name]] = ("jpg" if extension == "jpeg" or extension not in IMAGE_EXTENSIONS
                                         else extension, data)
        except tarfile.ReadError:
            pass  # damage after the images wanted; one that is missing is named below
        for record in by_shard[shard]:
            if record["key"] not in images:
                raise ValueError(f"shard {shard}: the image of key {record['key']} is no longer in the crawl's tar")
            extension, data = images[record["key"]]
            stem = f"{stems[(shard, record['key'])]}_{record['pair']}"
            buffer.append((stem, extension, data, json.dumps(record, ensure_ascii=False).encode()))
            if len(buffer) == samples_per_shard:
                flush()
    flush()
    return written


def _write_tar(path: Path, samples: list[tuple[str, str, bytes, bytes]]) -> Path:
    partial = path.with_suffix(".tar.tmp")
    with tarfile.open(partial, "w", format=tarfile.USTAR_FORMAT) as tar:
        for stem, extension, image, row in samples:
            for suffix, payload in ((extension, image), ("json", row)):
                info = tarfile.TarInfo(check_member_name(f"{stem}.{suffix}"))
                info.size = len(payload)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(payload))
    os.replace(partial, path)
    return path
