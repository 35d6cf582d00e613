"""What samples checks the crawl's files against, before any row goes further.

The crawl is untrusted input. Here: img2dataset's parquet columns made regular (a missing
column added as nulls, a mistyped one converted, bad values set to null with a note), caption
text decoded and capped, and tar member names and parquet keys that could name a path
refused (image bytes are checked in assets/crawl/images.py). Checks return the reason for what
they refuse or change, as text that assets/samples.py records on the row; only a parquet
that cannot give rows at all raises (ValueError, naming the file).
"""

import codecs
import json
import math
import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

REQUIRED_COLUMNS = ("key", "status")
# img2dataset's parquet columns (and DataComp's uid) with the types every later stage reads.
CRAWL_COLUMNS = {
    "url": pa.string(), "caption": pa.string(), "key": pa.string(), "status": pa.string(),
    "error_message": pa.string(), "width": pa.int64(), "height": pa.int64(), "original_width": pa.int64(),
    "original_height": pa.int64(), "exif": pa.string(), "sha256": pa.string(), "uid": pa.string(),
}
# Longer captions are cut: CLIP reads 77 tokens, and megabyte captions would only slow the
# tokenizer, fastText, the toxicity model and DuckDB down. LAION captions are rarely > 1,000.
MAX_CAPTION_CHARS = 4096
MAX_CAPTION_BYTES = 4 * MAX_CAPTION_CHARS  # enough UTF-8 for MAX_CAPTION_CHARS characters
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


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


def printable_name(name: str) -> str:
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


def _is_nested(kind: pa.DataType) -> bool:
    return pa.types.is_nested(kind) or (pa.types.is_dictionary(kind) and pa.types.is_nested(kind.value_type))


def nested_as_json(column: pa.ChunkedArray) -> pa.Array:
    """A crawl's own struct, list or map column as JSON text. The lake reads every shard's
    samples together, and DuckDB can widen scalar types that differ between shards (to
    text) but not a struct in one shard and a string or list in another."""
    return pa.array([None if value is None else json.dumps(value, default=str, ensure_ascii=False)
                     for value in column.to_pylist()], pa.string())


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
        target, kind = CRAWL_COLUMNS.get(name), table.schema.field(name).type
        if target is None and (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            target = pa.string()  # any other text column: DuckDB refuses the lake if it is not UTF-8
        if target is None and _is_nested(kind):
            table = table.set_column(table.column_names.index(name), name, nested_as_json(table.column(name)))
            column_notes.append(f"column {name} is {kind}: stored as JSON text")
            continue
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
