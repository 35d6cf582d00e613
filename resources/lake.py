"""The lake: where every output lives, and the one place that knows its layout.

    <lake>/shards/<shard>/samples.parquet
    <lake>/shards/<shard>/embeddings/<model>/keys.parquet    commits versions/<v>/{img_emb,text_emb}.npy, failures
    <lake>/shards/<shard>/scores/<filter>.parquet            model-independent filters
    <lake>/shards/<shard>/scores/<model>/<filter>.parquet    filters computed from embeddings
    <lake>/shards/<shard>/dedup/<model>/assignment.parquet   commits versions/<v>/{vectors,rows}.npy
    <lake>/shards/<shard>/dedup/<model>/duplicates.parquet
    <lake>/dedup/<model>/centroids.json                      names centroids/<v>/centroids.npy
    <lake>/dedup/<model>/state.json                          commits state/<v>/{pairs,groups}.parquet
    <lake>/flyt/<model>/scorer.json                          commits versions/<v>/scorer.safetensors
    <lake>/subsets/<policy>/members.parquet                  commits versions/<v>/{uids.npy,checks.json}
    <lake>/indices/<policy>/<model>/index_info.json          commits versions/<v>/{image.index,keys.parquet}
    <lake>/audits/<policy>/metrics.json

Files that must change together are written into a version folder named by their content,
then committed by one file written last that names the version (in its Parquet key-value
metadata or its JSON): a reader sees the old set or the new one, whole.

A killed run never leaves a half-written file under its final name. On a local disk (and
in memory://) every write goes to a temporary name first and is renamed into place. The
temporary name is `<final>.tmp-<host>-<pid>-<random>`: no reader's glob (`*.parquet`,
`keys.parquet`, ...) matches it, and the next write of the same file removes the leftovers
of writers on this host that are no longer running (a killed run's; those of a live writer,
or of another host, are left alone). On an object store (s3://, gs://) the final name is
written directly: the store publishes an object only when its upload completes, and an
upload abandoned on error is aborted (resources/object_store.py). Paths go through fsspec.
"""

import contextlib
import io
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from typing import IO, Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from resources.object_store import ObjectStoreFields, publishes_on_close, writing
from resources.processes import is_gone, this_process
from resources.safe_paths import check_policy_name, check_relative, check_shard_name

TEMPORARY = ".tmp-"  # between a final name and its writer's host-pid-random suffix


# Key of samples.parquet's key-value metadata that holds the crawl the shard was read from.
CRAWL_METADATA_KEY = "clipsieve.crawl"
# ... and the fingerprint of the crawl files it was read from (resources/crawl.py).
FINGERPRINT_METADATA_KEY = "clipsieve.crawl_fingerprint"


def with_metadata(table: pa.Table, extra: dict[str, str]) -> pa.Table:
    """`table` with `extra` in its Parquet key-value metadata, replacing keys of the same name."""
    metadata = {(k.decode() if isinstance(k, bytes) else k): v for k, v in (table.schema.metadata or {}).items()}
    return table.replace_schema_metadata({**metadata, **extra})


def samples_path(shard: str) -> str:
    return f"shards/{check_shard_name(shard)}/samples.parquet"


def embeddings_dir(shard: str, model_id: str) -> str:
    return f"shards/{check_shard_name(shard)}/embeddings/{model_id}"


def score_path(shard: str, filter_name: str, model_id: str | None = None) -> str:
    """Scores of one filter for one shard; filters over embeddings live under the model id."""
    check_shard_name(shard)  # a partition key from the UI or a crawl file name: one plain component
    if model_id is None:
        return f"shards/{shard}/scores/{filter_name}.parquet"
    return f"shards/{shard}/scores/{model_id}/{filter_name}.parquet"


# The per-shard score files (scores/<name>.parquet, and scores/<model>/<name>.parquet for
# those computed from embeddings).
SHARD_SCORES = ("language", "quality", "image_hashes", "toxicity", "caption_terms")
MODEL_SCORES = ("clip_similarity", "nsfw", "watermark", "aesthetic", "text_in_image")


def pool_shards(lake: "LakeResource", model_id: str,
                registered: list[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """(shards in the scored pool, shards left out -> what they lack): a shard is in the pool
    when every per-shard output exists for the model (samples, embeddings, each score). A
    shard whose per-shard step failed is left out of the cross-shard assets, and named;
    `registered` (the instance's partitions) also names shards with no output at all."""
    needed = {"samples": "samples.parquet", "embeddings": f"embeddings/{model_id}/keys.parquet",
              **{f"scores/{n}": f"scores/{n}.parquet" for n in SHARD_SCORES},
              **{f"scores/{n}": f"scores/{model_id}/{n}.parquet" for n in MODEL_SCORES}}
    present = {what: {path.split("/")[1] for path in lake.glob(f"shards/*/{name}")} for what, name in needed.items()}
    every = set().union(*present.values(), registered or [])
    complete = sorted(s for s in every if all(s in shards for shards in present.values()))
    left_out = {s: "no " + ", ".join(w for w, shards in present.items() if s not in shards)
                for s in sorted(every - set(complete))}
    return complete, left_out


def preference_dir(shard: str, model_id: str) -> str:
    """A shard's preference files: candidates.parquet and candidate_errors.parquet (the
    caption_candidates asset), pairs.parquet and dropped.parquet (preference_pairs)."""
    return f"shards/{check_shard_name(shard)}/preference/{model_id}"


def dedup_dir(model_id: str) -> str:
    """The pool-wide near-duplicate files of a model: centroids and the pairwise step's state."""
    return f"dedup/{model_id}"


def flyt_dir(model_id: str) -> str:
    """The FLYT scorer trained on a model's embeddings: scorer.json names versions/<v>/scorer.safetensors."""
    return f"flyt/{model_id}"


def assignment_dir(shard: str, model_id: str) -> str:
    """A shard's near-duplicate files: its cluster assignment and its duplicate groups."""
    check_shard_name(shard)
    return f"shards/{shard}/dedup/{model_id}"


# A subset is committed by writing its members.parquet, whose key-value metadata (under
# this key) holds its version, check results and parameters; its other files sit in
# versions/<version>/ and are written first. So a reader sees the old subset or the new
# one whole, and a candidate that fails a blocking check is never committed.
SUBSET_RECORD_KEY = "clipsieve.subset"


def members_path(policy: str) -> str:
    return f"subsets/{check_policy_name(policy)}/members.parquet"


def subset_versions_dir(policy: str) -> str:
    return f"subsets/{check_policy_name(policy)}/versions"


def uids_path(policy: str, version: str) -> str:
    """The subset version as DataComp's uid file (see assets/export.py)."""
    return f"{subset_versions_dir(policy)}/{check_shard_name(version)}/uids.npy"


def checks_path(policy: str, version: str) -> str:
    """Results of a candidate's asset checks (committed or not), for inspection."""
    return f"{subset_versions_dir(policy)}/{check_shard_name(version)}/checks.json"


def committed_subset(lake: "LakeResource", policy: str) -> dict | None:
    """The committed subset's record (version, checks, params); None when there is no
    subset, {} when its members file carries no record (written by an older clipsieve)."""
    if not lake.exists(members_path(policy)):
        return None
    record = lake.parquet_metadata(members_path(policy)).get(SUBSET_RECORD_KEY)
    return json.loads(record) if record else {}


def prune_versions(lake: "LakeResource", folder: str, keep: set[str]) -> None:
    """Remove the version folders under `folder` other than `keep` (the committed version and
    the one before it, which a reader that opened it a moment ago may still be reading)."""
    for path in lake.glob(f"{folder}/*"):
        if path.rsplit("/", 1)[-1] not in keep:
            lake.remove(path, recursive=True)


def index_dir(policy: str, model_id: str) -> str:
    return f"indices/{check_policy_name(policy)}/{model_id}"


def audit_dir(policy: str) -> str:
    return f"audits/{check_policy_name(policy)}"


class LakeResource(ObjectStoreFields):
    """Output storage: a local folder or an fsspec URL (s3://, gs://, memory://)."""

    root: str = Field(
        default_factory=lambda: os.environ.get("CLIPSIEVE_LAKE", "data/lake"),
        description="Root of the lake: a folder or an fsspec URL ($CLIPSIEVE_LAKE).",
    )

    def _fs(self) -> tuple[fsspec.AbstractFileSystem, str]:
        return self.open_root(self.root)

    def filesystem(self) -> fsspec.AbstractFileSystem:
        """The lake's fsspec filesystem, configured (what DuckDB reads it through)."""
        return self._fs()[0]

    @property
    def url(self) -> str:
        """The lake root: an absolute folder for a local lake, a URL otherwise."""
        return self.path("").rstrip("/")

    def path(self, relative: str) -> str:
        """Full path of a lake file: absolute for a local lake, a URL otherwise."""
        fs, root = self._fs()
        full = f"{root}/{check_relative(relative)}"
        return full if self.is_local() else fs.unstrip_protocol(full)

    def is_local(self) -> bool:
        fs, _ = self._fs()
        protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
        return "file" in protocols

    def exists(self, relative: str) -> bool:
        fs, root = self._fs()
        return fs.exists(f"{root}/{check_relative(relative)}")

    def glob(self, pattern: str) -> list[str]:
        """Lake-relative paths matching a glob pattern, sorted."""
        fs, root = self._fs()
        return sorted(p[len(root) + 1:] if p.startswith(root) else p
                      for p in fs.glob(f"{root}/{check_relative(pattern)}"))

    @contextlib.contextmanager
    def _writer(self, relative: str) -> Iterator[IO[bytes]]:
        """A file to write `relative` through; it appears under its final name complete when
        the block ends, and not at all when the block raises."""
        fs, root = self._fs()
        final = f"{root}/{check_relative(relative)}"
        if publishes_on_close(fs):
            with writing(fs, final) as f:
                yield f
            return
        folder = final.rsplit("/", 1)[0]
        fs.makedirs(folder, exist_ok=True)
        _remove_dead_temporaries(fs, folder, final.rsplit("/", 1)[1])
        host, pid = this_process()
        # Unique per writer: parallel runs never share a temporary, whatever they write.
        tmp = f"{final}{TEMPORARY}{host}-{pid}-{uuid.uuid4().hex[:12]}"
        try:
            with fs.open(tmp, "wb") as f:
                yield f
            fs.mv(tmp, final)
        except BaseException:
            with contextlib.suppress(Exception):
                fs.rm(tmp)
            raise

    def write_bytes(self, relative: str, data: bytes) -> None:
        with self._writer(relative) as f:
            f.write(data)

    def write_file(self, relative: str, local_path: str) -> None:
        """Copy a local file into the lake (streamed, never whole in memory), atomically as
        write_bytes does."""
        with self._writer(relative) as f, open(local_path, "rb") as source:
            shutil.copyfileobj(source, f, 16 << 20)

    def download(self, relative: str, local_path: str) -> None:
        """Copy a lake file to a local path (streamed)."""
        fs, root = self._fs()
        fs.get_file(f"{root}/{check_relative(relative)}", local_path)

    def remove(self, relative: str, recursive: bool = False) -> None:
        """Delete a lake file (or with `recursive`, a folder) if it exists."""
        fs, root = self._fs()
        path = f"{root}/{check_relative(relative)}"
        if fs.exists(path):
            fs.rm(path, recursive=recursive)

    def retire_shard(self, shard: str) -> str:
        """Move a shard's outputs from shards/ to retired/shards/ (out of every view and glob),
        replacing an earlier retired copy; `clipsieve gc` deletes retired/. Returns the new place."""
        fs, root = self._fs()
        source = f"{root}/shards/{check_shard_name(shard)}"
        target = f"{root}/retired/shards/{check_shard_name(shard)}"
        if fs.exists(target):
            fs.rm(target, recursive=True)
        if fs.exists(source):
            fs.makedirs(f"{root}/retired/shards", exist_ok=True)
            fs.mv(source, target, recursive=True)
        return self.path(f"retired/shards/{shard}")

    def read_bytes(self, relative: str) -> bytes:
        fs, root = self._fs()
        with fs.open(f"{root}/{check_relative(relative)}", "rb") as f:
            return f.read()

    def write_parquet(self, relative: str, table: pa.Table) -> None:
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        self.write_bytes(relative, sink.getvalue())

    def read_parquet(self, relative: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(io.BytesIO(self.read_bytes(relative)), columns=columns)

    def parquet_metadata(self, relative: str) -> dict[str, str]:
        """The key-value metadata of a Parquet file (its footer only is read)."""
        fs, root = self._fs()
        with fs.open(f"{root}/{check_relative(relative)}", "rb") as f:
            metadata = pq.read_schema(f).metadata or {}
        return {k.decode(): v.decode() for k, v in metadata.items() if not k.startswith(b"ARROW:")}

    def parquet_rows(self, relative: str) -> int:
        """Rows of a Parquet file (its footer only is read)."""
        fs, root = self._fs()
        with fs.open(f"{root}/{check_relative(relative)}", "rb") as f:
            return pq.ParquetFile(f).metadata.num_rows

    def write_npy(self, relative: str, array: np.ndarray) -> None:
        sink = io.BytesIO()
        np.save(sink, array, allow_pickle=False)
        self.write_bytes(relative, sink.getvalue())

    def read_npy(self, relative: str) -> np.ndarray:
        return np.load(io.BytesIO(self.read_bytes(relative)), allow_pickle=False)

    def write_npy_parts(self, relative: str, shape: tuple[int, ...], dtype: np.dtype,
                        parts: Iterable[np.ndarray]) -> None:
        """Write a C-ordered .npy of `shape` and `dtype` from consecutive row blocks, streamed:
        the whole array is never in memory (an object store gets a multipart upload)."""
        dtype, written = np.dtype(dtype), 0
        with self._writer(relative) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                     "fortran_order": False, "shape": tuple(shape)})
            for part in parts:
                part = np.ascontiguousarray(part, dtype=dtype)
                f.write(part.data)
                written += len(part)
            if written != shape[0]:
                raise ValueError(f"{relative}: {written} rows written for a shape of {shape}")

    def read_npy_rows(self, relative: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of a C-ordered .npy array, reading only those bytes (a ranged
        read on an object store)."""
        return self.read_npy_runs(relative, [(start, stop)])

    def read_npy_runs(self, relative: str, runs: list[tuple[int, int]], out: np.ndarray | None = None) -> np.ndarray:
        """The rows of each [start, stop) run of a C-ordered .npy array, concatenated in
        order: the file opened once, a ranged read per run (runs are clipped to the array).
        With `out` (C-contiguous, of the array's dtype and row shape, rows enough), the rows
        are read into it and a view of it returned: a reader reusing one buffer does not
        fault fresh pages in for every read."""
        fs, root = self._fs()
        with fs.open(f"{root}/{check_relative(relative)}", "rb") as f:
            version = np.lib.format.read_magic(f)
            shape, fortran, dtype = _npy_header(f, version)
            if fortran:
                raise ValueError(f"{relative}: Fortran-ordered arrays cannot be read by rows")
            begin = f.tell()
            if len(runs) > 1 and hasattr(os, "posix_fadvise") and self.is_local():
                # Runs skip rows: readahead would read the rows between them too.
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
            row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
            clipped = [(max(0, a), min(b, shape[0])) for a, b in runs]
            clipped = [(a, b) for a, b in clipped if b > a]
            total = sum(b - a for a, b in clipped)
            if out is None:
                out = np.empty((total, *shape[1:]), dtype)
            elif out.dtype != dtype or out.shape[1:] != tuple(shape[1:]) or len(out) < total \
                    or not out.flags.c_contiguous:
                raise ValueError(f"{relative}: {total} rows of {dtype} {tuple(shape[1:])} do not fit the buffer given")
            out = out[:total]
            buffer, at = memoryview(out.reshape(-1).view(np.uint8)), 0
            for a, b in clipped:
                size = (b - a) * row_bytes
                f.seek(begin + a * row_bytes)
                if f.readinto(buffer[at:at + size]) != size:
                    raise ValueError(f"{relative}: shorter than its header says")
                at += size
        return out

    def write_json(self, relative: str, value: Any) -> None:
        self.write_bytes(relative, (json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode())

    def read_json(self, relative: str) -> Any:
        return json.loads(self.read_bytes(relative))


def _npy_header(f: Any, version: tuple[int, int]) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) from an open .npy file just past its magic string."""
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f"unsupported .npy format version {version}")


def temporary_owner(name: str) -> tuple[str, str, int] | None:
    """(final name, host, pid) of a temporary lake file name, or None if it is not one."""
    final, mark, suffix = name.partition(TEMPORARY)
    parts = suffix.rsplit("-", 2)  # host names may hold dashes; pid and random part do not
    if not mark or not final or len(parts) != 3 or not parts[0] or not parts[1].isdigit():
        return None
    return final, parts[0], int(parts[1])


def _remove_dead_temporaries(fs: fsspec.AbstractFileSystem, folder: str, base: str) -> None:
    """Remove `<base>.tmp-*` files in `folder` whose writer on this host is gone (a killed run's)."""
    try:
        names = fs.ls(folder, detail=False)
    except FileNotFoundError:
        return
    for path in names:
        owner = temporary_owner(path.rsplit("/", 1)[-1])
        if owner is not None and owner[0] == base and is_gone(owner[1], owner[2]):
            with contextlib.suppress(FileNotFoundError):
                fs.rm(path)
