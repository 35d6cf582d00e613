"""samples: one row per crawl parquet row, failed downloads included, joined to the tar.

The crawl is untrusted. Its parquet rows come first, in order, one row each; then one row
per tar-only thing, so every parquet row and every tar member is accounted for:
    parquet_row  the row's position in the shard's parquet; null for the tar-only rows
    shard        the partition key
    tar_member   name of the sample's image in the tar (null if none); for a tar-only row,
                 the member it records (names that are not valid UTF-8 are stored decoded
                 with replacement)
    image_bytes  size of that image
    image_status for a parquet row:
                   "ok"                    the only status that goes on to the model
                   img2dataset's status    of a failed download ("failed_to_download", ...)
                   "invalid_status"        the row's status is null
                   "invalid_key"           the key is null, empty or not a plain name
                                           ("/", "\\", "..", control characters, not UTF-8)
                   "duplicate_key"         an earlier row has the same key (that one is matched)
                   "missing_image"         no image for the key in the tar (or the tar broke first)
                   "corrupt_image"         the bytes are empty, not JPEG, PNG or WebP, do not
                                           decode, or cost more than assets/crawl/images.py allows
                                           (bytes, pixels, aspect ratio, JPEG scans: never
                                           decoded), or were not checked within the per-image
                                           time budget (assets/crawl/image_worker.py)
                 for a tar-only row (parquet_row null):
                   "not_in_parquet"        a key with members in the tar but no valid row in the
                                           parquet (key = the member's key, one row per key)
                   "unsafe_member_name"    an absolute name, one with "..", a backslash, control
                                           characters or bytes that are not UTF-8: never matched
                                           to a key (key null)
                   "not_a_regular_file"    a symlink, hard link or device member (key null)
                   "duplicate_image"       a second image for a key that already has one; the
                                           first in the tar is the sample's (key null)
    image_error  why the image is unusable, or null
    caption_error what was done to the caption, or null: truncated to MAX_CAPTION_CHARS,
                 not valid UTF-8 (decoded with replacement), or missing
    row_warnings other problems that leave the sample usable, "; "-joined: no .txt or .json
                 beside the image, a field of the wrong type set to null, a field that was
                 not UTF-8, a tar image for a failed download
Captions come from the parquet's caption column, or the key's .txt member when the column
is missing or the value null. img2dataset's columns (CRAWL_COLUMNS, assets/crawl/reader.py) are always present
with their usual types: a missing one is added as nulls and a mistyped one converted, as
the materialization's metadata notes. The crawl's other columns are kept; a struct, list or
map column is stored as JSON text, so shards that disagree on a column's type still read
together (DuckDB widens differing scalar types to text, but cannot mix a struct with a
string). A parquet that cannot give rows at all (unreadable,
no `key` or `status` column, or either of them not text) fails the shard's run with the
file and the problem named. Every image is decoded once here (at reduced size with JPEG
draft mode) so corrupt bytes are found and named before any model work. Nothing read
from the crawl is ever used as a path: the tar is only streamed.
"""

import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

import pyarrow as pa

from assets.crawl.image_worker import ImageCheckWorker
from assets.crawl.images import MAX_IMAGE_BYTES, check_image
from assets.crawl.reader import (
    MAX_CAPTION_BYTES,
    cap_caption,
    decode_text,
    key_problem,
    member_key,
    member_name_problem,
    normalize_crawl_table,
    printable_name,
)
from resources.crawl import IMAGE_MEMBER_EXTENSIONS, CrawlResource
from resources.lake import (
    CRAWL_METADATA_KEY,
    FINGERPRINT_METADATA_KEY,
    LakeResource,
    samples_path,
    with_metadata,
)

CODE_VERSION = "4"


@dataclass
class TarContents:
    """What one streaming pass over a shard's tar found, for the keys of its parquet."""
    images: dict[str, tuple[str, int, str | None]] = field(default_factory=dict)  # key -> member, size, error
    texts: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # key -> caption, caption note
    sidecars: dict[str, set[str]] = field(default_factory=dict)  # key -> {"txt", "json"} present
    unread_images: dict[str, tuple[str, int]] = field(default_factory=dict)  # images of failed rows
    orphans: dict[str, list[str]] = field(default_factory=dict)  # key not in the parquet -> member names
    orphan_images: dict[str, tuple[str, int]] = field(default_factory=dict)
    orphan_texts: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    extra_rows: list[dict] = field(default_factory=list)  # unsafe, non-regular and duplicate members
    members: int = 0
    error: str | None = None


def _read_caption(handle: IO[bytes], size: int, name: str) -> tuple[str, str | None]:
    data = handle.read(MAX_CAPTION_BYTES)
    text, replaced = decode_text(data, complete=size <= len(data))
    notes = [f"{name} is not valid UTF-8 (decoded with replacement)"] if replaced else []
    text, capped = cap_caption(text)
    if size > len(data):
        notes.append(f"caption in {name} truncated from {size} bytes to {len(text)} characters")
    elif capped:
        notes.append(capped)
    return text, "; ".join(notes) or None


def scan_tar(crawl: CrawlResource, shard: str, keys: set[str], successes: set[str],
             check: Callable[[bytes], str | None] = check_image) -> TarContents:
    """Stream the tar once: check the first image of each successful key in `keys` (with
    `check`: check_image, or the same in a worker under a time budget), read
    the captions of `keys`, and note everything else. Only bounded amounts are read: the
    first MAX_CAPTION_CHARS of a .txt, images up to MAX_IMAGE_BYTES, nothing of a .json."""
    found = TarContents()
    try:
        for info, handle in crawl.scan_tar(shard):
            found.members += 1
            name = info.name
            problem = member_name_problem(name)
            if problem:
                found.extra_rows.append({
                    "tar_member": printable_name(name), "image_bytes": info.size, "image_status": "unsafe_member_name",
                    "image_error": f"tar member name {problem}: never used as a path nor matched to a key"})
                continue
            if info.isdir():
                continue
            key, extension = member_key(name)
            extension = extension.lower()
            if handle is None:
                found.extra_rows.append({
                    "tar_member": name, "image_bytes": None, "image_status": "not_a_regular_file",
                    "image_error": f"tar member {name} is not a regular file (type {info.type!r}): not read"})
                continue
            if key not in keys:
                found.orphans.setdefault(key, []).append(name)
                if extension in IMAGE_MEMBER_EXTENSIONS and key not in found.orphan_images:
                    found.orphan_images[key] = (name, info.size)
                elif extension == "txt" and key not in found.orphan_texts:
                    found.orphan_texts[key] = _read_caption(handle, info.size, name)
                continue
            if extension in IMAGE_MEMBER_EXTENSIONS:
                first = found.images.get(key) or found.unread_images.get(key)
                if first is not None:
                    found.extra_rows.append({
                        "tar_member": name, "image_bytes": info.size, "image_status": "duplicate_image",
                        "image_error": f"a second image for key {key} in {shard}.tar: {first[0]} is the sample's"})
                elif key not in successes:
                    found.unread_images[key] = (name, info.size)
                elif info.size > MAX_IMAGE_BYTES:
                    found.images[key] = (name, info.size,
                                         f"image is {info.size} bytes, over the {MAX_IMAGE_BYTES}-byte limit; not read")
                else:
                    data = handle.read()
                    found.images[key] = (name, len(data), check(data))
            elif extension in ("txt", "json"):
                if extension == "txt" and key not in found.texts:
                    found.texts[key] = _read_caption(handle, info.size, name)
                found.sidecars.setdefault(key, set()).add(extension)
    except (tarfile.TarError, OSError, EOFError) as error:
        # Keep what was read before the damage; what is missing is marked by the caller.
        found.error = (f"{shard}.tar unreadable after {found.members} members: {type(error).__name__}: {error}")
    return found


@dataclass
class ShardSamples:
    table: pa.Table
    notes: list[str]  # about the shard's files as a whole: converted columns, a broken tar


def read_shard(crawl: CrawlResource, shard: str, checker: ImageCheckWorker | None = None) -> ShardSamples:
    """The shard's parquet rows with their tar members, checked and statused, then the
    tar-only rows (see the module docstring). Images are checked by `checker`, else by a
    worker of its own under the crawl's per-image time budget."""
    path = crawl.file(shard, ".parquet")
    try:
        raw = crawl.read_parquet(shard)
    except (pa.ArrowException, OSError) as error:
        raise ValueError(f"{path}: not a readable parquet file: {type(error).__name__}: {error}") from error
    rows = normalize_crawl_table(raw, path)
    table = rows.table
    keys = table.column("key").to_pylist()
    statuses = table.column("status").to_pylist()
    messages = table.column("error_message").to_pylist()
    parquet_captions = table.column("caption").to_pylist()
    has_caption_column = "caption" in raw.column_names

    # Which row owns each key: the first with a usable key; the others are recorded.
    owner: dict[str, int] = {}
    key_states: list[tuple[str, str] | None] = []
    for i, key in enumerate(keys):
        problem = key_problem(key)
        if problem:
            key_states.append(("invalid_key", f"{problem} (row {i} of {path})"))
        elif key in owner:
            key_states.append(("duplicate_key", f"key {key} is also row {owner[key]} of {path}, which is used"))
        else:
            owner[key] = i
            key_states.append(None)
    successes = {k for k, i in owner.items() if statuses[i] == "success"}
    if checker is None:
        with ImageCheckWorker(crawl.image_check_seconds) as own:
            tar = scan_tar(crawl, shard, set(owner), successes, own.check)
    else:
        tar = scan_tar(crawl, shard, set(owner), successes, checker.check)

    out: dict[str, list] = {c: [] for c in ("tar_member", "image_bytes", "image_status", "image_error",
                                            "caption", "caption_error", "row_warnings")}
    for i, (key, status) in enumerate(zip(keys, statuses)):
        warnings_ = list(rows.row_notes[i])
        member, size, reason = None, None, None
        caption_notes = [rows.caption_notes[i]] if rows.caption_notes[i] else []
        caption = parquet_captions[i]
        if key_states[i] is not None:
            state, reason = key_states[i]
        elif status != "success":
            if status is None:
                state, reason = "invalid_status", f"status is null (row {i} of {path})"
            else:
                state, reason = str(status), messages[i] or f"img2dataset status {status}"
            if key in tar.unread_images:  # recorded, but the status says the download failed: not used
                member, size = tar.unread_images[key]
                warnings_.append(f"{shard}.tar holds {member} for this row, whose status is {status}")
        elif key not in tar.images:
            state = "missing_image"
            reason = tar.error or f"no image for key {key} in {shard}.tar"
        else:
            member, size, reason = tar.images[key]
            state = "ok" if reason is None else "corrupt_image"
            present = tar.sidecars.get(key, set())
            warnings_ += [f"no {key}.{ext} in {shard}.tar" for ext in ("txt", "json")
                          if ext not in present and not tar.error]
        if caption is None and key_states[i] is None and key in tar.texts:
            caption, note = tar.texts[key]
            caption_notes += [note] if note else []
        elif caption is None and state in ("ok", "corrupt_image"):
            caption_notes.append("no caption: " + ("null in the parquet" if has_caption_column
                                                   else "no caption column in the parquet")
                                 + f" and no {key}.txt in {shard}.tar")
        caption, capped = cap_caption(caption)
        caption_notes += [capped] if capped else []
        for name, value in (("tar_member", member), ("image_bytes", size), ("image_status", state),
                            ("image_error", reason), ("caption", caption),
                            ("caption_error", "; ".join(caption_notes) or None),
                            ("row_warnings", "; ".join(warnings_) or None)):
            out[name].append(value)

    tar_only = [_orphan_row(tar, key, names, shard) for key, names in tar.orphans.items()] + tar.extra_rows
    if tar_only:
        columns = {"key": [r.get("key") for r in tar_only], "caption": [r.get("caption") for r in tar_only]}
        nulls = {c: pa.nulls(len(tar_only), table.schema.field(c).type) for c in table.column_names
                 if c not in columns}
        extra = pa.table({c: nulls[c] if c in nulls else pa.array(columns[c], pa.string())
                          for c in table.column_names})
        table = pa.concat_tables([table, extra])
        for name in out:
            if name != "caption":
                out[name] += [r.get(name) for r in tar_only]
    out["caption"] += [r.get("caption") for r in tar_only]

    table = table.set_column(table.column_names.index("caption"), "caption", pa.array(out["caption"], pa.string()))
    extra_columns = {
        "parquet_row": pa.array(list(range(len(keys))) + [None] * len(tar_only), pa.int64()),
        "shard": pa.array([shard] * table.num_rows, pa.string()),
        "tar_member": pa.array(out["tar_member"], pa.string()),
        "image_bytes": pa.array(out["image_bytes"], pa.int64()),
        "image_status": pa.array(out["image_status"], pa.string()),
        "image_error": pa.array(out["image_error"], pa.string()),
        "caption_error": pa.array(out["caption_error"], pa.string()),
        "row_warnings": pa.array(out["row_warnings"], pa.string()),
    }
    for name, column in extra_columns.items():
        if name in table.column_names:  # a crawl column of that name is replaced by ours
            table = table.drop_columns([name])
        table = table.append_column(name, column)
    notes = list(rows.column_notes) + ([tar.error] if tar.error else [])
    return ShardSamples(table, notes)


def _orphan_row(tar: TarContents, key: str, names: list[str], shard: str) -> dict:
    image = tar.orphan_images.get(key)
    caption, note = tar.orphan_texts.get(key, (None, None))
    listed = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return {
        "key": key, "caption": caption, "caption_error": note,
        "tar_member": image[0] if image else names[0], "image_bytes": image[1] if image else None,
        "image_status": "not_in_parquet",
        "image_error": f"{listed} in {shard}.tar: key {key} has no usable row in {shard}.parquet",
    }


def write_samples(crawl: CrawlResource, lake: LakeResource, shard: str, fingerprint: str,
                  checker: ImageCheckWorker | None = None) -> tuple[ShardSamples, str | None]:
    """Read the shard and write its samples.parquet, recording the crawl it came from and
    the crawl files' fingerprint. When the lake holds outputs of other crawl files under
    the same shard name, they move to retired/ first (returned: where): a score or
    embedding file of the old files never meets the new samples in the pool."""
    result = read_shard(crawl, shard, checker)
    path, retired = samples_path(shard), None
    if lake.exists(path):
        previous = lake.parquet_metadata(path).get(FINGERPRINT_METADATA_KEY)
        if previous is not None and previous != fingerprint:
            retired = lake.retire_shard(shard)
    table = with_metadata(result.table, {CRAWL_METADATA_KEY: crawl.url, FINGERPRINT_METADATA_KEY: fingerprint})
    lake.write_parquet(path, table)
    return ShardSamples(table, result.notes), retired


def read_samples(crawl: CrawlResource, shard: str) -> pa.Table:
    """The shard's samples table (see read_shard)."""
    return read_shard(crawl, shard).table
