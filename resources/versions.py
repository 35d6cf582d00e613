"""Content digests that go into asset versions and lake paths."""

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

# Digests of large files (model checkpoints) are kept across processes: hashing ViT-B-32's
# 600 MB takes 1.7 s, and every `clipsieve` command and Dagster run process needs it.
CACHED_FROM_BYTES = 16 << 20


def cache_path(name: str) -> Path:
    """A file of clipsieve's cache: in $CLIPSIEVE_CACHE_DIR, else ~/.cache/clipsieve (read
    at each call, so a process may point it elsewhere)."""
    return Path(os.environ.get("CLIPSIEVE_CACHE_DIR") or Path.home() / ".cache" / "clipsieve") / name


DIGESTS = "file_digests.json"


def _read_cache() -> dict:
    try:
        return json.loads(cache_path(DIGESTS).read_text())
    except (OSError, ValueError):
        return {}


def write_cache_file(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write a file of the cache with `write(file)`: whole or not at all (readers see the old
    file or the new one), and best effort: a cache that cannot be written only costs the next
    process the work again."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as f:
                write(f)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    except OSError:
        pass


def _write_cache(path: str, entry: dict) -> None:
    cache = {**_read_cache(), path: entry}
    write_cache_file(cache_path(DIGESTS), lambda f: f.write(json.dumps(cache).encode()))


@lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    cached = size >= CACHED_FROM_BYTES
    if cached:
        entry = _read_cache().get(path, {})
        if entry.get("size") == size and entry.get("mtime_ns") == mtime_ns:
            return entry["digest"]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()[:10]
    if cached:
        _write_cache(path, {"size": size, "mtime_ns": mtime_ns, "digest": value})
    return value


def file_digest(path: str) -> str:
    """First 10 hex digits of the file's SHA-256, cached while its size and mtime stay (in
    the process, and for large files in $CLIPSIEVE_CACHE_DIR across processes)."""
    stat = os.stat(path)
    return _digest(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]
