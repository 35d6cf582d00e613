"""Hostile img2dataset shards for tests: a normal shard from the sample crawl, then damaged.

`base_shards` writes a small sample crawl and reads each shard back as a `Shard` (parquet
rows and tar members in memory); the `*_case` functions each change one thing about a
copy of it, the way a broken downloader, a hostile server or a careless re-upload would,
and return it with the keys they touched. `Shard.write` puts the result beside the other
shards as <name>.tar, <name>.parquet and <name>_stats.json.
"""

import copy
import io
import json
import struct
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from assets.demo.sample_crawl import write_sample_crawl

HUGE_CAPTION_CHARS = 5 * 2**20


@dataclass
class Member:
    name: str  # may hold surrogates: bytes that are not UTF-8 in the tar header
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""


@dataclass
class Shard:
    name: str
    rows: list[dict]
    members: list[Member]
    schema: pa.Schema
    touched: set[str] = field(default_factory=set)  # keys whose rows the case changes
    picks: dict[str, str] = field(default_factory=dict)  # role in the case -> key, for the assertions
    parquet: pa.Table | None = None  # written instead of rows/schema when set
    tar: bytes | None = None  # written instead of members when set

    def clean_keys(self, truth: dict[str, str | None]) -> list[str]:
        """Keys of successful rows with no planted defect: their images are fine."""
        return [r["key"] for r in self.rows if r["status"] == "success" and r["key"] in truth
                and truth[r["key"]] is None]

    def member(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)

    def drop_members(self, names: set[str]) -> None:
        self.members = [m for m in self.members if m.name not in names]

    def table(self) -> pa.Table:
        return self.parquet if self.parquet is not None else pa.Table.from_pylist(self.rows, schema=self.schema)

    def tar_bytes(self) -> bytes:
        return self.tar if self.tar is not None else tar_bytes(self.members)

    def write(self, out: Path) -> None:
        (out / f"{self.name}.tar").write_bytes(self.tar_bytes())
        pq.write_table(self.table(), out / f"{self.name}.parquet")
        successes = sum(r.get("status") == "success" for r in self.rows)
        stats = {"count": len(self.rows), "successes": successes, "failed_to_download": len(self.rows) - successes,
                 "failed_to_resize": 0, "duration": 0.0, "status_dict": {"success": successes}}
        (out / f"{self.name}_stats.json").write_text(json.dumps(stats))


def tar_bytes(members: list[Member]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type, info.linkname, info.mode = member.type, member.linkname, 0o644
            info.size = len(member.data) if member.type == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(member.data) if info.size else None)
    return buffer.getvalue()


def member_offsets(data: bytes) -> list[tuple[str, int, int]]:
    """(name, header offset, data offset) of each member of a tar."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return [(m.name, m.offset, m.offset_data) for m in tar.getmembers()]


def base_shards(folder: Path, shards: int, samples_per_shard: int, seed: int) -> tuple[list[Shard], dict]:
    """A sample crawl written to `folder` and read back, one Shard per shard, with the
    ground truth (key -> planted defect or None)."""
    write_sample_crawl(folder, shards, samples_per_shard, seed)
    truth = {r["key"]: r["defect"] for r in pq.read_table(folder / "ground_truth.parquet").to_pylist()}
    result = []
    for index in range(shards):
        name = f"{index:05d}"
        table = pq.read_table(folder / f"{name}.parquet")
        with tarfile.open(folder / f"{name}.tar") as tar:
            members = [Member(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
        result.append(Shard(name, table.to_pylist(), members, table.schema))
    return result, truth


def _copy(shard: Shard, name: str) -> Shard:
    return Shard(name, copy.deepcopy(shard.rows), [copy.copy(m) for m in shard.members], shard.schema)


# --- the cases: each takes a base shard and the ground truth, returns the damaged copy -----

def _cut_tar(base: Shard, name: str, where: str) -> Shard:
    """The tar cut 100 bytes into the middle member's header or into its data."""
    shard = _copy(base, name)
    data = shard.tar_bytes()
    offsets = member_offsets(data)
    _, header_offset, data_offset = offsets[len(offsets) // 2]
    shard.tar = data[:(header_offset if where == "header" else data_offset) + 100]
    shard.touched = _images_from(shard, len(offsets) // 2)
    return shard


def truncated_tar_case(base: Shard, truth: dict) -> Shard:
    """The tar cut in the middle of an image's bytes."""
    return _cut_tar(base, "truncated_tar", "data")


def truncated_header_case(base: Shard, truth: dict) -> Shard:
    """The tar cut inside a member header: tarfile alone takes that for a complete tar."""
    return _cut_tar(base, "truncated_header", "header")


def _images_from(shard: Shard, index: int) -> set[str]:
    """Keys whose image is member `index` of the tar or later."""
    return {m.name.rsplit(".", 1)[0] for m in shard.members[index:] if m.name.endswith(".jpg")}


def unsafe_names_case(base: Shard, truth: dict) -> Shard:
    """Members named ../x, /abs/x, with control characters or non-UTF-8 bytes; a symlink;
    a "./" prefix (harmless); the only image of one key under an unsafe name."""
    shard = _copy(base, "unsafe_names")
    clean = shard.clean_keys(truth)
    kept, moved, dotted, linked = clean[0], clean[1], clean[2], clean[3]
    image = shard.member(f"{kept}.jpg").data
    shard.members += [
        Member(f"../{kept}.jpg", image),  # its real member stays: the key is fine
        Member(f"/tmp/{kept}.jpg", image),
        Member(f"a/../../{kept}.txt", b"evil caption"),
        Member("\x1b[31mred\x1b[0m.jpg", image),
        Member("\udcff\udcfe.jpg", image),
        Member("C:\\Windows\\evil.jpg", image),
    ]
    moved_member = shard.member(f"{moved}.jpg")
    moved_member.name = f"../../{moved}.jpg"  # the key's only image, under an unsafe name
    shard.member(f"{dotted}.jpg").name = f"./{dotted}.jpg"
    shard.drop_members({f"{linked}.jpg"})
    shard.members.append(Member(f"{linked}.jpg", type=tarfile.SYMTYPE, linkname="/etc/passwd"))
    shard.touched = {moved, dotted, linked}
    shard.picks = {"kept": kept, "moved": moved, "dotted": dotted, "linked": linked}
    return shard


def missing_sidecars_case(base: Shard, truth: dict) -> Shard:
    """Images without their .txt, their .json, or both."""
    shard = _copy(base, "missing_sidecars")
    a, b, c = shard.clean_keys(truth)[:3]
    shard.drop_members({f"{a}.txt", f"{b}.json", f"{c}.txt", f"{c}.json"})
    shard.touched = {a, b, c}
    shard.picks = {"no_txt": a, "no_json": b, "neither": c}
    return shard


def tar_captions_case(base: Shard, truth: dict) -> Shard:
    """No caption column in the parquet: captions come from .txt members, one missing,
    one huge, one not UTF-8."""
    shard = _copy(base, "tar_captions")
    missing, huge, latin1 = shard.clean_keys(truth)[:3]
    shard.drop_members({f"{missing}.txt"})
    shard.member(f"{huge}.txt").data = b"a red circle " * (HUGE_CAPTION_CHARS // 13)
    shard.member(f"{latin1}.txt").data = "une photo de caf\u00e9 cr\u00e8me".encode("latin-1")
    for row in shard.rows:
        del row["caption"]
    shard.schema = shard.schema.remove(shard.schema.get_field_index("caption"))
    shard.touched = {missing, huge, latin1}
    shard.picks = {"missing": missing, "huge": huge, "latin1": latin1}
    return shard


def huge_captions_case(base: Shard, truth: dict) -> Shard:
    """A 5 MB caption in the parquet (and its .txt); a null caption whose .txt is not UTF-8."""
    shard = _copy(base, "huge_captions")
    huge, null_caption = shard.clean_keys(truth)[:2]
    text = "a blue square on a green background " * (HUGE_CAPTION_CHARS // 36)
    next(r for r in shard.rows if r["key"] == huge)["caption"] = text
    shard.member(f"{huge}.txt").data = text.encode()
    next(r for r in shard.rows if r["key"] == null_caption)["caption"] = None
    shard.member(f"{null_caption}.txt").data = b"bad \xff\xfe bytes \xc3"
    shard.touched = {huge, null_caption}
    shard.picks = {"huge": huge, "null_caption": null_caption}
    return shard


def mistyped_columns_case(base: Shard, truth: dict) -> Shard:
    """caption as binary (one value not UTF-8), width as text (one not a number), height as
    float, status as large_string, an extra text column with bytes that are not UTF-8."""
    shard = _copy(base, "mistyped_columns")
    bad_caption, bad_width = shard.clean_keys(truth)[:2]
    table = pa.Table.from_pylist(shard.rows, schema=shard.schema)
    captions = [(r["caption"] or "").encode() for r in shard.rows]
    captions[_row(shard, bad_caption)] = b"caf\xe9 \xff"
    widths = [None if r["width"] is None else str(r["width"]) for r in shard.rows]
    widths[_row(shard, bad_width)] = "wide"
    notes = pa.array([b"\xff\xfe" if i == 0 else b"fine" for i in range(len(shard.rows))]).view(pa.string())
    table = (table
             .set_column(table.schema.get_field_index("caption"), "caption", pa.array(captions, pa.binary()))
             .set_column(table.schema.get_field_index("width"), "width", pa.array(widths, pa.string()))
             .set_column(table.schema.get_field_index("height"), "height",
                         pa.array([None if r["height"] is None else float(r["height"]) for r in shard.rows]))
             .set_column(table.schema.get_field_index("status"), "status",
                         pa.array([r["status"] for r in shard.rows], pa.large_string()))
             .append_column("note", notes))
    shard.parquet = table
    shard.touched = {bad_caption, bad_width, shard.rows[0]["key"]}
    shard.picks = {"bad_caption": bad_caption, "bad_width": bad_width}
    return shard


def parquet_only_keys_case(base: Shard, truth: dict) -> Shard:
    """Successful parquet rows whose images are not in the tar: two removed, one new row."""
    shard = _copy(base, "parquet_only_keys")
    a, b = shard.clean_keys(truth)[:2]
    shard.drop_members({f"{a}.jpg", f"{a}.txt", f"{a}.json", f"{b}.jpg"})
    extra = dict(shard.rows[_row(shard, a)], key="99999999", url="http://nowhere.invalid/x.jpg")
    shard.rows.append(extra)
    shard.touched = {a, b, "99999999"}
    shard.picks = {"no_members": a, "no_image": b, "new_row": "99999999"}
    return shard


def tar_only_keys_case(base: Shard, truth: dict) -> Shard:
    """Tar samples with no parquet row: two rows removed, one sample added under a new key,
    one in a subfolder."""
    shard = _copy(base, "tar_only_keys")
    a, b, c = shard.clean_keys(truth)[:3]
    shard.rows = [r for r in shard.rows if r["key"] not in (a, b)]
    image = shard.member(f"{c}.jpg").data
    shard.members += [Member("88888888.jpg", image), Member("88888888.txt", b"a stray sample"),
                      Member(f"sub/{c}.jpg", image)]
    shard.touched = {a, b}
    shard.picks = {"row_removed": a, "other_row_removed": b, "in_subfolder": c}
    return shard


def bad_images_case(base: Shard, truth: dict) -> Shard:
    """Zero bytes, a truncated JPEG, an HTML page, and decompression bombs: a PNG and a
    JPEG claiming 30000x30000 pixels (over 2x Pillow's limit: an error) and a PNG claiming
    10000x10000 (over the limit, under 2x: Pillow only warns)."""
    shard = _copy(base, "bad_images")
    keys = shard.clean_keys(truth)[:6]
    zero, truncated, html, bomb_png, bomb_jpeg, warning_png = keys
    shard.member(f"{zero}.jpg").data = b""
    data = shard.member(f"{truncated}.jpg").data
    shard.member(f"{truncated}.jpg").data = data[:len(data) // 2]
    shard.member(f"{html}.jpg").data = b"<html><body>403 Forbidden</body></html>"
    shard.member(f"{bomb_png}.jpg").data = png_claiming(30_000, 30_000)
    shard.member(f"{bomb_jpeg}.jpg").data = jpeg_claiming(shard.member(f"{bomb_jpeg}.jpg").data, 30_000, 30_000)
    shard.member(f"{warning_png}.jpg").data = png_claiming(10_000, 10_000)
    shard.touched = set(keys)
    shard.picks = dict(zip(("zero", "truncated", "html", "bomb_png", "bomb_jpeg", "warning_png"), keys))
    return shard


def duplicate_keys_case(base: Shard, truth: dict) -> Shard:
    """A key twice in the parquet, null, empty and path-like keys, a null status, an image
    member twice under one name and a key with both .jpg and .png."""
    shard = _copy(base, "duplicate_keys")
    twice, same_name, two_formats, null_status = shard.clean_keys(truth)[:4]
    row = shard.rows[_row(shard, twice)]
    shard.rows.append(dict(row, caption="the second row of a key"))
    shard.rows.append(dict(row, key=None))
    shard.rows.append(dict(row, key=""))
    shard.rows.append(dict(row, key=f"../{twice}"))
    shard.rows[_row(shard, null_status)]["status"] = None
    shard.members.append(Member(f"{same_name}.jpg", b"garbage, second member of that name"))
    shard.members.append(Member(f"{two_formats}.png", png_bytes()))
    shard.touched = {twice, null_status}
    shard.picks = {"twice": twice, "same_name": same_name, "two_formats": two_formats, "null_status": null_status}
    return shard


def one_sample_case(base: Shard, truth: dict) -> Shard:
    shard = _copy(base, "one_sample")
    key = shard.clean_keys(truth)[0]
    shard.rows = [shard.rows[_row(shard, key)]]
    shard.members = [m for m in shard.members if m.name.startswith(f"{key}.")]
    return shard


def empty_case(base: Shard, truth: dict) -> Shard:
    """A parquet with no rows and a tar with no members."""
    shard = _copy(base, "empty")
    shard.rows, shard.members = [], []
    return shard


def empty_files_case(base: Shard, truth: dict) -> Shard:
    """A parquet with no rows and a zero-byte tar."""
    shard = _copy(base, "empty_files")
    shard.rows, shard.members, shard.tar = [], [], b""
    return shard


CASES: dict[str, Callable[[Shard, dict], Shard]] = {
    "truncated_tar": truncated_tar_case,
    "truncated_header": truncated_header_case,
    "unsafe_names": unsafe_names_case,
    "missing_sidecars": missing_sidecars_case,
    "tar_captions": tar_captions_case,
    "huge_captions": huge_captions_case,
    "mistyped_columns": mistyped_columns_case,
    "parquet_only_keys": parquet_only_keys_case,
    "tar_only_keys": tar_only_keys_case,
    "bad_images": bad_images_case,
    "duplicate_keys": duplicate_keys_case,
    "one_sample": one_sample_case,
    "empty": empty_case,
    "empty_files": empty_files_case,
}


# --- parquets that cannot give rows: the shard's run must fail, naming file and problem ---

def unusable_parquets(base: Shard) -> dict[str, pa.Table | bytes]:
    """name -> parquet table (or raw bytes) that no samples table can come from."""
    table = pa.Table.from_pylist(base.rows, schema=base.schema)
    keys_as_int = pa.array([int(k) for k in table.column("key").to_pylist()], pa.int64())
    return {
        "no_key": table.drop_columns(["key"]),
        "no_status": table.drop_columns(["status"]),
        "int_keys": table.set_column(table.schema.get_field_index("key"), "key", keys_as_int),
        "bool_status": table.set_column(table.schema.get_field_index("status"), "status",
                                        pa.array([s == "success" for s in table.column("status").to_pylist()])),
        "not_parquet": b"PAR1 this is not a parquet file",
    }


def write_unusable(base: Shard, out: Path, name: str, parquet: pa.Table | bytes) -> None:
    shard = _copy(base, name)
    shard.write(out)
    if isinstance(parquet, bytes):
        (out / f"{name}.parquet").write_bytes(parquet)
    else:
        pq.write_table(parquet, out / f"{name}.parquet")


# --- image bytes ---------------------------------------------------------------------------

def png_bytes(size: tuple[int, int] = (16, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height: a decompression bomb as Pillow sees it."""
    data = png_bytes()
    ihdr = data[8 + 8:8 + 8 + 13]
    patched = struct.pack(">II", width, height) + ihdr[8:]
    chunk = b"IHDR" + patched
    return data[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[8 + 25:]


def jpeg_claiming(jpeg: bytes, width: int, height: int) -> bytes:
    """`jpeg` with its frame header (SOF0/SOF2) saying width x height."""
    at = 2
    while at < len(jpeg):
        marker, length = jpeg[at + 1], struct.unpack(">H", jpeg[at + 2:at + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            return jpeg[:at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9:]
        at += 2 + length
    raise ValueError("no frame header in the JPEG")


def _row(shard: Shard, key: str) -> int:
    return next(i for i, r in enumerate(shard.rows) if r["key"] == key)
