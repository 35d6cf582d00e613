"""Exports of a subset in the formats trainers read (`clipsieve export`).

    uids        DataComp's subset file: a sorted numpy array of 128-bit uids, dtype
                (u8, u8), the uid's hex split into two 64-bit halves. Samples without a
                uid get md5(key) as theirs (keys are unique in an img2dataset crawl).
    parquet     the members' rows with every score (the `scores` view plus duplicate flags).
    webdataset  the members' original <key>.jpg and .json, plus the caption as samples cleaned
                it as .txt, re-sharded into new tars of `samples_per_shard`, each with a
                parquet and stats file like img2dataset's.

A sampling policy's member drawn several times is exported once, with its `draws` in the
parquet rows; only the uid file repeats it (as FLYT's released subsets do).

Keys, shard and policy names come from the crawl or the command line, so none is used as a
path before resources/safe_paths.py has checked it: a hostile key is exported under a
safe derived name (`member_stem`), never as a tar member like `../../evil.jpg`.
"""

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from resources.catalog import Catalog, read_sql
from resources.crawl import IMAGE_EXTENSIONS, CrawlResource
from resources.lake import CRAWL_METADATA_KEY, LakeResource, committed_subset, members_path, samples_path
from resources.safe_paths import check_member_name, check_policy_name, check_shard_name, member_stem

UID_DTYPE = np.dtype("u8,u8")
def unique_stems(pairs: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """The tar member name of each (shard, key): member_stem(key), shard-qualified where two
    members would share one (the same key in two shards, or a key that equals another key's
    `unsafe_` name), numbered if even that collides. Deterministic: (shard, key) order."""
    plain = {pair: member_stem(pair[1]) for pair in pairs}
    counts: dict[str, int] = {}
    for stem in plain.values():
        counts[stem] = counts.get(stem, 0) + 1
    stems: dict[tuple[str, str], str] = {}
    used: set[str] = set()
    for shard, key in sorted(pairs):
        stem = plain[(shard, key)]
        if counts[stem] > 1:
            stem = member_stem(f"{shard}_{stem}")
        base, n = stem, 1
        while stem in used:
            stem, n = f"{base}_{n}", n + 1
        used.add(stem)
        stems[(shard, key)] = stem
    return stems


MANIFEST = ".clipsieve-export.json"  # what an export wrote into its folder: --overwrite removes those


def prepare_output(out: Path, overwrite: bool, protected: dict[str, str]) -> None:
    """Check (and with `overwrite`, clear) the export folder before anything is written.

    Refused: a folder inside `protected` ones (the crawl, the lake: an export never writes
    there), and a folder that holds anything, unless `overwrite` and all of it is what an
    earlier export wrote (its manifest lists it), which is then removed."""
    resolved = out.resolve()
    for what, folder in protected.items():
        if "://" in folder:
            continue
        base = Path(folder).resolve()
        if resolved == base or base in resolved.parents:
            raise ValueError(f"--out {out} is inside the {what} ({base}): an export never writes there")
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"--out {out} is not a folder")
    present = sorted(p.name for p in out.iterdir())
    if not present:
        return
    if not overwrite:
        raise ValueError(f"--out {out} is not empty ({len(present)} entries, e.g. {present[:3]}): give --overwrite "
                         "to replace an earlier export there, or an empty folder")
    manifest = out / MANIFEST
    ours = set(json.loads(manifest.read_text())["files"]) if manifest.is_file() else set()
    foreign = [name for name in present if name not in ours and name != MANIFEST]
    if foreign:
        raise ValueError(f"--overwrite replaces only what an earlier export wrote; {out} also holds {foreign[:5]}")
    for name in ours:
        (out / check_member_name(name)).unlink(missing_ok=True)
    manifest.unlink(missing_ok=True)


def write_manifest(out: Path) -> None:
    """List what the export wrote (the folder was empty before it), for a later --overwrite."""
    files = sorted(p.name for p in out.iterdir() if p.name != MANIFEST)
    (out / MANIFEST).write_text(json.dumps({"files": files}, indent=2) + "\n")


def export_uids(lake: LakeResource, policy: str, out: Path) -> Path:
    """DataComp's subset file: the committed subset's uid array (sql/subsets/uids.sql)."""
    check_policy_name(policy)  # it names the output file
    record = committed_subset(lake, policy)
    if not record or "uids" not in record:
        raise ValueError(f"subset {policy} has no committed uid array: materialize {policy}_subset")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{policy}_uids.npy"
    lake.download(record["uids"], str(path))
    return path


def export_parquet(catalog: Catalog, policy: str, out: Path) -> Path:
    check_policy_name(policy)  # it names the output file
    table = catalog.query(read_sql("export/members.sql"), {"policy": policy})
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{policy}.parquet"
    pq.write_table(table, path)
    return path


_SHARD_COLUMNS = ["url", "caption", "key", "status", "error_message", "width", "height",
                  "original_width", "original_height", "sha256", "uid"]


def recorded_crawl(lake: LakeResource, policy: str) -> str:
    """The crawl the subset's members were read from, as their shards' samples.parquet record it."""
    members = lake.read_parquet(members_path(check_policy_name(policy)), columns=["shard"])
    crawls = set()
    for shard in sorted(set(members.column("shard").to_pylist())):
        crawl = lake.parquet_metadata(samples_path(check_shard_name(shard))).get(CRAWL_METADATA_KEY)
        if crawl is None:
            raise ValueError(f"shard {shard}'s samples do not record their crawl (materialized by an older "
                             "clipsieve): give --crawl")
        crawls.add(crawl)
    if len(crawls) > 1:
        raise ValueError(f"the members come from several crawls ({sorted(crawls)}): give --crawl")
    if not crawls:
        raise ValueError(f"subset {policy!r} has no members: nothing to export")
    return crawls.pop()


def export_webdataset(lake: LakeResource, crawl: CrawlResource, policy: str, out: Path,
                      samples_per_shard: int = 10_000) -> list[Path]:
    """Re-shard the members' original files into `out`/NNNNN.tar (+ .parquet, _stats.json)."""
    members = lake.read_parquet(members_path(check_policy_name(policy)))
    wanted_by_shard: dict[str, list[str]] = {}
    for key, shard in zip(members.column("key").to_pylist(), members.column("shard").to_pylist()):
        wanted_by_shard.setdefault(shard, []).append(key)
    # A members file from before subsets had draws holds each member once.
    draws = members.column("draws").to_pylist() if "draws" in members.column_names else [1] * members.num_rows
    draws_of = dict(zip(zip(members.column("shard").to_pylist(), members.column("key").to_pylist()), draws))
    stems = unique_stems([(shard, key) for shard, keys in wanted_by_shard.items() for key in keys])
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    buffer: list[tuple[dict, dict[str, bytes], str]] = []

    def flush() -> None:
        if buffer:
            written.append(_write_shard(out, len(written), buffer))
            buffer.clear()

    for shard in sorted(wanted_by_shard):
        samples = lake.read_parquet(f"shards/{check_shard_name(shard)}/samples.parquet")
        wanted = set(wanted_by_shard[shard])
        # The usable row of each key: a key the crawl repeats also has duplicate_key rows.
        rows = {r["key"]: {**r, "draws": draws_of[(shard, r["key"])]}
                for r in samples.to_pylist() if r["key"] in wanted and r["image_status"] == "ok"}
        image_member = {r["tar_member"]: r["key"] for r in rows.values()}
        files: dict[str, dict[str, bytes]] = {k: {} for k in rows}
        try:
            for name, data in crawl.iter_tar(shard, wanted=set(image_member) | {f"{k}.json" for k in rows}):
                stem, _, extension = name.rpartition(".")
                if name in image_member:
                    # Member names are rebuilt from the key and a known extension: nothing the
                    # crawl wrote names a path in the export.
                    files[image_member[name]][_image_extension(extension)] = data
                else:
                    files[stem]["json"] = data
        except tarfile.ReadError:
            pass  # damage after the members' images (samples read them); a missing one is named below
        for key in sorted(rows):
            if not set(files[key]) & set(IMAGE_EXTENSIONS):
                raise ValueError(f"shard {shard}: image of member {key} is no longer in the crawl's tar")
            buffer.append((rows[key], files[key], stems[(shard, key)]))
            if len(buffer) == samples_per_shard:
                flush()
    flush()
    return written


def _image_extension(extension: str) -> str:
    extension = extension.lower()
    return "jpg" if extension == "jpeg" else extension if extension in IMAGE_EXTENSIONS else "jpg"


def _shard_row(row: dict, stem: str) -> dict:
    """The exported parquet row: the crawl's columns, with the key the tar members carry and
    the times the member was drawn."""
    return {**{c: row.get(c) for c in _SHARD_COLUMNS}, "key": stem, "draws": row.get("draws", 1)}


def _write_shard(out: Path, index: int, samples: list[tuple[dict, dict[str, bytes], str]]) -> Path:
    name = f"{index:05d}"
    tar_path = out / f"{name}.tar"
    with tarfile.open(tar_path.with_suffix(".tar.tmp"), "w", format=tarfile.USTAR_FORMAT) as tar:
        for row, files, stem in samples:
            image_extension = next(e for e in IMAGE_EXTENSIONS if e in files)
            # The caption as samples cleaned it (UTF-8, at most 4096 characters), as the model saw it.
            caption = (row.get("caption") or "").encode()
            meta = files.get("json", json.dumps(_shard_row(row, stem), default=str).encode())
            for extension, payload in ((image_extension, files[image_extension]), ("txt", caption), ("json", meta)):
                # The key is the crawl's: the member name is its safe stem, checked once more.
                info = tarfile.TarInfo(check_member_name(f"{stem}.{extension}"))
                info.size = len(payload)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(payload))
    os.replace(tar_path.with_suffix(".tar.tmp"), tar_path)
    table = pa.Table.from_pylist([_shard_row(row, stem) for row, _, stem in samples])
    pq.write_table(table, out / f"{name}.parquet")
    stats = {"count": len(samples), "successes": len(samples), "failed_to_download": 0, "failed_to_resize": 0,
             "status_dict": {"success": len(samples)}}
    (out / f"{name}_stats.json").write_text(json.dumps(stats, indent=2))
    return tar_path
