"""Content digests that go into asset versions and lake paths."""

import hashlib
import os
from functools import lru_cache


@lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:10]


def file_digest(path: str) -> str:
    """First 10 hex digits of the file's SHA-256 (cached while size and mtime stay)."""
    stat = os.stat(path)
    return _digest(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]
