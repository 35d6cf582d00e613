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

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from dagster import ConfigurableResource
from pydantic import Field

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


class CrawlResource(ConfigurableResource):
    """Where the img2dataset crawl lives (a folder or an fsspec URL)."""

    root: str = Field(
        default=os.environ.get("CLIPSIEVE_CRAWL", "data/sample_crawl"),
        description="Folder or fsspec URL of the img2dataset output ($CLIPSIEVE_CRAWL).",
    )

    def _fs(self) -> tuple[fsspec.AbstractFileSystem, str]:
        fs, root = fsspec.core.url_to_fs(self.root)
        return fs, root.rstrip("/")

    def shards(self) -> list[str]:
        """Names of the complete shards (tar, parquet and stats present), sorted."""
        fs, root = self._fs()
        if not fs.exists(root):
            return []
        names = {os.path.basename(p) for p in fs.ls(root, detail=False)}
        return sorted(
            n[: -len(".tar")]
            for n in names
            if n.endswith(".tar") and f"{n[:-4]}.parquet" in names and f"{n[:-4]}_stats.json" in names
        )

    def fingerprint(self, shard: str) -> str:
        """Size and modification time of the shard's three files, hashed: it changes when
        img2dataset (or anyone) rewrites the shard under the same name."""
        fs, _ = self._fs()
        parts = []
        for suffix in (".tar", ".parquet", "_stats.json"):
            info = fs.info(self.file(shard, suffix))
            parts.append(f"{suffix}:{info.get('size')}:{info.get('mtime') or info.get('LastModified') or ''}")
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def file(self, shard: str, suffix: str) -> str:
        """Path of a shard file, e.g. file("00000", ".tar")."""
        _, root = self._fs()
        return f"{root}/{shard}{suffix}"

    def read_parquet(self, shard: str) -> pa.Table:
        fs, _ = self._fs()
        with fs.open(self.file(shard, ".parquet"), "rb") as f:
            return pq.read_table(io.BytesIO(f.read()))

    def iter_tar(self, shard: str, wanted: set[str] | None = None) -> Iterator[tuple[str, bytes]]:
        """(member name, bytes) for each regular file in the shard's tar, or only `wanted` names.

        A truncated tar raises tarfile.ReadError after the members before the damage.
        """
        fs, _ = self._fs()
        with fs.open(self.file(shard, ".tar"), "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for member in tar:
                if not member.isfile() or (wanted is not None and member.name not in wanted):
                    continue
                handle = tar.extractfile(member)
                if handle is not None:
                    yield member.name, handle.read()
