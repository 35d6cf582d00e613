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
                   "corrupt_image"         the bytes are empty, do not decode, are larger than
                                           MAX_IMAGE_BYTES, or claim more than MAX_IMAGE_PIXELS
                                           pixels (Pillow's decompression-bomb limit, warning
                                           range included; such an image is never decoded)
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
is missing or the value null. img2dataset's columns (CRAWL_COLUMNS) are always present
with their usual types: a missing one is added as nulls and a mistyped one converted, as
the materialization's metadata notes. A parquet that cannot give rows at all (unreadable,
no `key` or `status` column, or either of them not text) fails the shard's run with the
file and the problem named. Every image is decoded once here (at reduced size with JPEG
draft mode) so corrupt bytes are found and named before any model work. Nothing read
from the crawl is ever used as a path: the tar is only streamed.
"""

import codecs
import io
import math
import re
import tarfile
import warnings
from dataclasses import dataclass, field
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc
from dagster import AssetExecutionContext, AssetSpec, DataVersion, MaterializeResult, MetadataValue, asset
from PIL import Image

from assets.scores.common import for_each_shard
from orchestration.partitions import SHARD_BATCHES, shard_partitions
from resources.crawl import IMAGE_EXTENSIONS, CrawlResource
from resources.lake import LakeResource, samples_path

REQUIRED_COLUMNS = ("key", "status")
CODE_VERSION = "2"
# img2dataset's parquet columns (and DataComp's uid) with the types every later stage reads.
CRAWL_COLUMNS = {
    "url": pa.string(), "caption": pa.string(), "key": pa.string(), "status": pa.string(),
    "error_message": pa.string(), "width": pa.int64(), "height": pa.int64(), "original_width": pa.int64(),
    "original_height": pa.int64(), "exif": pa.string(), "sha256": pa.string(), "uid": pa.string(),
}
# Longer captions are cut: CLIP reads 77 tokens, and megabyte captions would only slow the
# tokenizer, fastText, the toxicity model and DuckDB down. LAION captions are rarely > 1,000.
MAX_CAPTION_CHARS = 4096
_MAX_CAPTION_BYTES = 4 * MAX_CAPTION_CHARS  # enough UTF-8 for MAX_CAPTION_CHARS characters
# Pillow's default Image.MAX_IMAGE_PIXELS, enforced here whatever the global is set to.
MAX_IMAGE_PIXELS = 89_478_485
MAX_IMAGE_BYTES = 64 * 2**20
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_BUFFER = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")

# The crawl shards themselves: files written by img2dataset, observed, never materialized here.
crawl_shard = AssetSpec(
    "crawl_shard",
    partitions_def=shard_partitions,
    group_name="crawl",
    description="An img2dataset shard: NNNNN.tar, NNNNN.parquet and NNNNN_stats.json in the crawl folder.",
)


def check_image(data: bytes) -> str | None:
    """None if `data` decodes as an image, else the reason it does not.

    The pixel count is checked from the header before anything is decoded.
    """
    if not data:
        return "zero-byte image"
    if len(data) > MAX_IMAGE_BYTES:
        return f"image is {len(data)} bytes, over the {MAX_IMAGE_BYTES}-byte limit"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                pixels = image.width * image.height
                if pixels > MAX_IMAGE_PIXELS:
                    return (f"DecompressionBombError: image claims {image.width}x{image.height} = {pixels} pixels, "
                            f"over the {MAX_IMAGE_PIXELS}-pixel limit; not decoded")
                image.draft("RGB", (64, 64))  # JPEG: decode at 1/8 scale, enough to find damage
                image.load()
    except Exception as error:  # noqa: BLE001 - any decoder failure is a property of the data
        return image_error_text(error)
    return None


def image_error_text(error: Exception) -> str:
    """A decoder error as recorded: Pillow names the buffer by its memory address, which
    would make the recorded reason (and the Parquet file) change from run to run."""
    return f"{type(error).__name__}: " + _BUFFER.sub("the image bytes", str(error))


def decode_text(data: bytes, complete: bool = True) -> tuple[str, bool]:
    """(text, whether bytes were replaced) for UTF-8 `data`; with complete=False a multi-byte
    character cut at the end (a capped read) is dropped, not counted as invalid."""
    try:
        return codecs.getincrementaldecoder("utf-8")("strict").decode(data, final=complete), False
    except UnicodeDecodeError:
        return codecs.getincrementaldecoder("utf-8")("replace").decode(data, final=complete), True


def cap_caption(caption: str | None) -> tuple[str | None, str | None]:
    """(caption, note): a caption longer than MAX_CAPTION_CHARS is cut to it."""
    if caption is None or len(caption) <= MAX_CAPTION_CHARS:
        return caption, None
    return caption[:MAX_CAPTION_CHARS], f"caption truncated from {len(caption)} to {MAX_CAPTION_CHARS} characters"


def member_name_problem(name: str) -> str | None:
    """Why a tar member name is unsafe to match (it could name a path outside any folder), or None."""
    if _SURROGATE.search(name):
        return "is not valid UTF-8"
    if _CONTROL.search(name):
        return "contains control characters"
    if "\\" in name:
        return "contains a backslash"
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        return "is an absolute path"
    if ".." in name.split("/"):
        return "contains '..'"
    return None


def member_key(name: str) -> tuple[str, str]:
    """(key, extension) of a safe member name, as img2dataset writes them: `<key>.<ext>`;
    a leading "./" (tar -C dir .) is not part of the key."""
    while name.startswith("./"):
        name = name[2:]
    folder, _, last = name.rpartition("/")
    stem, dot, extension = last.rpartition(".")
    if not dot:
        stem, extension = last, ""
    return (f"{folder}/{stem}" if folder else stem), extension


def key_problem(key: str | None) -> str | None:
    """Why a parquet key cannot name a sample (it names tar members and export files), or None."""
    if key is None:
        return "key is null"
    if not key:
        return "key is empty"
    if key in (".", "..") or "/" in key or "\\" in key:
        return f"key {key!r} is not a plain name"
    if _CONTROL.search(key):
        return f"key {key!r} contains control characters"
    if "\ufffd" in key or _SURROGATE.search(key):
        return f"key {key!r} is not valid UTF-8"
    return None


def _printable(name: str) -> str:
    """A member name as it can be stored (UTF-8), undecodable bytes replaced."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _is_text(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind) or pa.types.is_null(kind))


def _to_int(value: Any) -> int:
    """`value` as an int64, or ValueError."""
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d{1,19}\s*", value):
        value = int(value)
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not -2**63 <= value < 2**63:
        raise ValueError(value)
    return value


def coerce_column(column: pa.ChunkedArray, target: pa.DataType,
                  name: str) -> tuple[pa.Array, list[str | None], str | None]:
    """`column` as `target` (string or int64): (values, a note per row or None, a note for
    the whole column or None). Text that is not UTF-8 is decoded with replacement; a value
    that is not an integer becomes null."""
    notes: list[str | None] = [None] * len(column)
    source = column.type
    column_note = None if source == target else f"column {name} is {source}, converted to {target}"
    if source == target and (target != pa.string() or _valid_utf8(column)):
        return column.combine_chunks(), notes, None
    if not (pa.types.is_binary(source) or pa.types.is_large_binary(source)):
        try:  # the common case: a compatible type, or text that is valid after all
            values = pc.cast(column, target).combine_chunks()
            if target != pa.string() or _valid_utf8(values):
                return values, notes, column_note
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    raw = (pc.cast(column, pa.binary()) if pa.types.is_string(source) or pa.types.is_large_string(source)
           else column).to_pylist()
    converted: list[Any] = []
    for i, value in enumerate(raw):
        if value is None:
            converted.append(None)
        elif target == pa.string():
            if isinstance(value, bytes):
                text, replaced = decode_text(value)
                if replaced:
                    notes[i] = f"{name} is not valid UTF-8 (decoded with replacement)"
            else:
                text = str(value)
            converted.append(text)
        else:
            try:
                converted.append(_to_int(value))
            except (ValueError, UnicodeDecodeError, OverflowError):
                shown = decode_text(value)[0] if isinstance(value, bytes) else str(value)
                converted.append(None)
                notes[i] = f"{name} {shown[:40]!r} is not an integer (set to null)"
    return pa.array(converted, target), notes, column_note


def _valid_utf8(values: pa.ChunkedArray | pa.Array) -> bool:
    try:
        values.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


@dataclass
class CrawlRows:
    """The parquet's rows with img2dataset's columns in their usual types."""
    table: pa.Table
    caption_notes: list[str | None]
    row_notes: list[list[str]]
    column_notes: list[str]


def normalize_crawl_table(table: pa.Table, path: str) -> CrawlRows:
    """Check and convert a crawl parquet's columns; ValueError (naming `path`) if it cannot give rows."""
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: missing required column(s) {missing}; img2dataset writes key and status")
    for name in REQUIRED_COLUMNS:
        kind = table.schema.field(name).type
        if not _is_text(kind):
            raise ValueError(f"{path}: column {name!r} is {kind}, not text: img2dataset writes {name} as a string "
                             "(keys are the tar member names, zero-padded)")
    if len(set(table.column_names)) != len(table.column_names):
        raise ValueError(f"{path}: duplicate column names {table.column_names}")
    n = table.num_rows
    caption_notes: list[str | None] = [None] * n
    row_notes: list[list[str]] = [[] for _ in range(n)]
    column_notes: list[str] = []
    for name in table.column_names:
        target = CRAWL_COLUMNS.get(name)
        if target is None and (pa.types.is_string(table.schema.field(name).type)
                               or pa.types.is_large_string(table.schema.field(name).type)):
            target = pa.string()  # any other text column: DuckDB refuses the lake if it is not UTF-8
        if target is None:
            continue
        values, notes, column_note = coerce_column(table.column(name), target, name)
        table = table.set_column(table.column_names.index(name), name, values)
        if column_note:
            column_notes.append(column_note)
        for i, note in enumerate(notes):
            if note and name == "caption":
                caption_notes[i] = note
            elif note:
                row_notes[i].append(note)
    absent = [c for c in CRAWL_COLUMNS if c not in table.column_names]
    for name in absent:
        table = table.append_column(name, pa.nulls(n, CRAWL_COLUMNS[name]))
    if absent:
        column_notes.append(f"columns {absent} not in the parquet, added as nulls")
    return CrawlRows(table, caption_notes, row_notes, column_notes)


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
    data = handle.read(_MAX_CAPTION_BYTES)
    text, replaced = decode_text(data, complete=size <= len(data))
    notes = [f"{name} is not valid UTF-8 (decoded with replacement)"] if replaced else []
    text, capped = cap_caption(text)
    if size > len(data):
        notes.append(f"caption in {name} truncated from {size} bytes to {len(text)} characters")
    elif capped:
        notes.append(capped)
    return text, "; ".join(notes) or None


def scan_tar(crawl: CrawlResource, shard: str, keys: set[str], successes: set[str]) -> TarContents:
    """Stream the tar once: check the first image of each successful key in `keys`, read
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
                    "tar_member": _printable(name), "image_bytes": info.size, "image_status": "unsafe_member_name",
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
                if extension in IMAGE_EXTENSIONS and key not in found.orphan_images:
                    found.orphan_images[key] = (name, info.size)
                elif extension == "txt" and key not in found.orphan_texts:
                    found.orphan_texts[key] = _read_caption(handle, info.size, name)
                continue
            if extension in IMAGE_EXTENSIONS:
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
                    found.images[key] = (name, len(data), check_image(data))
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


def read_shard(crawl: CrawlResource, shard: str) -> ShardSamples:
    """The shard's parquet rows with their tar members, checked and statused, then the
    tar-only rows (see the module docstring)."""
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
    tar = scan_tar(crawl, shard, set(owner), successes)

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


def read_samples(crawl: CrawlResource, shard: str) -> pa.Table:
    """The shard's samples table (see read_shard)."""
    return read_shard(crawl, shard).table


@asset(
    partitions_def=shard_partitions,
    deps=[crawl_shard],
    group_name="per_shard",
    code_version=CODE_VERSION,
    compute_kind="pyarrow",
    backfill_policy=SHARD_BATCHES,
)
def samples(context: AssetExecutionContext, crawl: CrawlResource, lake: LakeResource) -> MaterializeResult:
    """Every input row of the shard, with tar member and image status, then the tar's
    members no row claims; nothing dropped."""
    fingerprints = {}

    def one(shard: str) -> dict:
        fingerprints[shard] = crawl.fingerprint(shard)
        result = read_shard(crawl, shard)
        table = result.table
        lake.write_parquet(samples_path(shard), table)
        statuses = pc.value_counts(table.column("image_status")).to_pylist()
        for note in result.notes:
            context.log.warning(f"{shard}: {note}")
        return {
            "crawl_fingerprint": fingerprints[shard],
            "rows": table.num_rows,
            "parquet_rows": int(pc.count(table.column("parquet_row")).as_py()),
            "usable_images": sum(s["counts"] for s in statuses if s["values"] == "ok"),
            **{f"image_status/{s['values']}": s["counts"] for s in statuses},
            "caption_errors": int(pc.count(table.column("caption_error")).as_py()),
            "row_warnings": int(pc.count(table.column("row_warnings")).as_py()),
            "crawl_notes": MetadataValue.json(result.notes),
            "path": lake.path(samples_path(shard)),
        }

    result = for_each_shard(context, one)
    # The data version follows the crawl files, so a rewritten shard makes everything below
    # it stale (a batch of shards shares one version, made of all their fingerprints).
    version = "-".join(fingerprints[s] for s in sorted(fingerprints))
    return MaterializeResult(data_version=DataVersion(f"{CODE_VERSION}-{version}"), metadata=result.metadata)
