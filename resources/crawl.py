"""The crawl: img2dataset output in webdataset mode, read-only and untrusted.

A shard is complete when its tar, parquet and stats file are all present (img2dataset
writes the stats last). Tar members are read by name; nothing is ever extracted to disk,
so a hostile member name cannot escape anywhere.
"""

import hashlib
import io
import os
import tarfile
from collections.abc import Iterator
from typing import IO

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from resources.object_store import ObjectStoreFields

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # what img2dataset writes, and what is read
# Tar members taken for images: those above, and others that get a row of their own saying
# their format is not read (assets/crawl/images.py), instead of passing unnoticed.
IMAGE_MEMBER_EXTENSIONS = IMAGE_EXTENSIONS + ("gif", "bmp", "tif", "tiff")


SHARD_SUFFIXES = (".tar", ".parquet", "_stats.json")  # a shard's three files
# An optional fourth: more captions per image (key, candidate, source), e.g. a captioning
# model's, read by the preference assets (assets/preference/candidates.py).
CANDIDATES_SUFFIX = "_candidates.parquet"


def _complete_shards(names: set[str]) -> list[str]:
    """Shards whose three files are all among the file `names`, sorted."""
    return sorted(n[: -len(".tar")] for n in names
                  if n.endswith(".tar") and all(f"{n[:-4]}{suffix}" in names for suffix in SHARD_SUFFIXES))


def _fingerprint(infos: list[dict], candidates: dict | None = None) -> str:
    """Of a shard's three files' fsspec infos, in SHARD_SUFFIXES order, and its candidates
    file's when it has one (a shard without one keeps the fingerprint it always had)."""
    named = list(zip(SHARD_SUFFIXES, infos)) + ([(CANDIDATES_SUFFIX, candidates)] if candidates else [])
    parts = [f"{suffix}:{info.get('size')}:{info.get('mtime') or info.get('LastModified') or ''}"
             for suffix, info in named]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


class CrawlResource(ObjectStoreFields):
    """Where the img2dataset crawl lives (a folder or an fsspec URL)."""

    root: str = Field(
        default_factory=lambda: os.environ.get("CLIPSIEVE_CRAWL", "data/sample_crawl"),
        description="Folder or fsspec URL of the img2dataset output ($CLIPSIEVE_CRAWL).",
    )
    image_check_seconds: float = Field(
        default=20.0,
        description="Time budget for checking one crawl image (decoded in a worker process, which is "
                    "replaced when an image takes longer; the image is recorded as not read). 0 checks "
                    "in the step's own process with no budget.",
    )

    def _fs(self) -> tuple[fsspec.AbstractFileSystem, str]:
        return self.open_root(self.root)

    @property
    def url(self) -> str:
        """Where the crawl is: an absolute folder for a local crawl, a URL otherwise (recorded in
        each shard's samples.parquet, so `clipsieve export` finds the crawl from the lake)."""
        fs, root = self._fs()
        protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
        return os.path.abspath(root) if "file" in protocols else fs.unstrip_protocol(root)

    def shards(self) -> list[str]:
        """Names of the complete shards (tar, parquet and stats present), sorted."""
        fs, root = self._fs()
        if not fs.exists(root):
            return []
        return _complete_shards({os.path.basename(p) for p in fs.ls(root, detail=False)})

    def is_deleted(self, shard: str) -> bool:
        """Whether none of the shard's files is in the crawl any more (a shard that is only
        incomplete, being rewritten by img2dataset, is not deleted)."""
        fs, _ = self._fs()
        return not any(fs.exists(self.file(shard, suffix)) for suffix in (".tar", ".parquet", "_stats.json"))

    def fingerprint(self, shard: str) -> str:
        """Size and modification time of the shard's three files, hashed: it changes when
        img2dataset (or anyone) rewrites the shard under the same name."""
        fs, _ = self._fs()
        candidates = self.file(shard, CANDIDATES_SUFFIX)
        return _fingerprint([fs.info(self.file(shard, suffix)) for suffix in SHARD_SUFFIXES],
                            fs.info(candidates) if fs.exists(candidates) else None)

    def fingerprints(self) -> dict[str, str]:
        """fingerprint() of every complete shard, from one listing of the crawl folder (one
        request on an object store, not three per shard)."""
        fs, root = self._fs()
        if not fs.exists(root):
            return {}
        listed = {os.path.basename(info["name"]): info for info in fs.ls(root, detail=True)}
        return {shard: _fingerprint([listed[f"{shard}{suffix}"] for suffix in SHARD_SUFFIXES],
                                    listed.get(f"{shard}{CANDIDATES_SUFFIX}"))
                for shard in _complete_shards(set(listed))}

    def file(self, shard: str, suffix: str) -> str:
        """Path of a shard file on the crawl's filesystem, e.g. file("00000", ".tar")."""
        _, root = self._fs()
        return f"{root}/{shard}{suffix}"

    def filesystem(self) -> fsspec.AbstractFileSystem:
        """The crawl's fsspec filesystem, configured (the paths `file` gives are on it)."""
        return self._fs()[0]

    def has_ground_truth(self) -> bool:
        """Whether the crawl has a ground_truth.parquet (the sample crawl's planted defects)."""
        return self.filesystem().exists(self.file("ground_truth", ".parquet"))

    def read_parquet(self, shard: str) -> pa.Table:
        fs, _ = self._fs()
        with fs.open(self.file(shard, ".parquet"), "rb") as f:
            return pq.read_table(io.BytesIO(f.read()))

    def read_candidates(self, shard: str) -> pa.Table | None:
        """The shard's candidates file as it is (None: the shard has none). Raises what
        pyarrow raises for a file that is not Parquet: the caller records it."""
        fs, _ = self._fs()
        path = self.file(shard, CANDIDATES_SUFFIX)
        if not fs.exists(path):
            return None
        with fs.open(path, "rb") as f:
            return pq.read_table(io.BytesIO(f.read()))

    def scan_tar(self, shard: str) -> Iterator[tuple[tarfile.TarInfo, IO[bytes] | None]]:
        """Every member of the shard's tar in order, streamed: its header, and for a regular
        file a handle on its data, readable until the next member is asked for.

        Raises tarfile.ReadError where the tar is damaged, after the members before the
        damage, including a tar that just stops (no end-of-archive block), which tarfile
        alone would take for a complete one.
        """
        fs, _ = self._fs()
        with fs.open(self.file(shard, ".tar"), "rb") as f:
            with tarfile.open(fileobj=f, mode="r|") as tar:
                for member in tar:
                    yield member, tar.extractfile(member) if member.isfile() else None
                end = tar.offset
            f.seek(end)
            block = f.read(tarfile.BLOCKSIZE)
            if block != bytes(tarfile.BLOCKSIZE):
                what = "the file ends" if len(block) < tarfile.BLOCKSIZE else "an unreadable header"
                raise tarfile.ReadError(f"{what} at byte {end} where a member or the end-of-archive block should be")

    def iter_tar(self, shard: str, wanted: set[str] | None = None) -> Iterator[tuple[str, bytes]]:
        """(member name, bytes) for each regular file in the shard's tar, or only `wanted` names.

        A name that occurs twice yields its first member only (as `samples` checks it).
        With `wanted`, reading stops once all of them are found, so a tar damaged after
        them still serves them. A truncated tar raises tarfile.ReadError after the
        members before the damage.
        """
        remaining = None if wanted is None else set(wanted)
        seen: set[str] = set()
        if remaining == set():
            return
        for member, handle in self.scan_tar(shard):
            if handle is None or member.name in seen or (remaining is not None and member.name not in remaining):
                continue
            seen.add(member.name)
            yield member.name, handle.read()
            if remaining is not None:
                remaining.discard(member.name)
                if not remaining:
                    return
