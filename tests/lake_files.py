"""The files of a lake, local or on S3, for tests that compare whole lakes: every file
complete, and two lakes holding the same outputs."""

import io
import json
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq

from resources.lake import LakeResource, temporary_owner


def lake_files(lake: Path | str) -> dict[str, Callable[[], bytes]]:
    """Lake-relative name -> a reader of the file's bytes, for a local folder or an s3:// lake
    (the AWS variables in this process's environment point at the server)."""
    fs, root = LakeResource(root=str(lake)).open_root(str(lake))
    if not fs.exists(root):
        return {}
    return {path[len(root) + 1:]: (lambda path=path: fs.cat_file(path)) for path in sorted(fs.find(root))}


def temporaries(lake: Path | str) -> list[str]:
    return [name for name in lake_files(lake) if temporary_owner(Path(name).name) is not None]


def assert_complete(lake: Path | str) -> None:
    """Every file under a final name is whole; temporaries cannot pass for outputs."""
    for name, read in lake_files(lake).items():
        if temporary_owner(Path(name).name) is not None:
            assert not name.endswith((".parquet", ".npy", ".json", ".index")), name  # no glob picks it up
            continue
        try:
            data = read()
        except FileNotFoundError:
            continue
        if name.endswith(".parquet"):
            pq.read_table(io.BytesIO(data))
        elif name.endswith(".npy"):
            np.load(io.BytesIO(data), allow_pickle=False)
        elif name.endswith(".json"):
            json.loads(data)
        elif name.endswith(".index"):
            faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        elif name.endswith(".html"):
            assert data.rstrip().endswith(b"</html>"), name


def compare_outputs(expected: Path | str, actual: Path | str) -> dict[str, list[str]]:
    """Assert both lakes hold the same outputs; return file names by how they are equal."""
    a, b = lake_files(expected), lake_files(actual)
    assert sorted(a) == sorted(b), f"files differ: {sorted(set(a) ^ set(b))}"
    kinds: dict[str, list[str]] = {"bytes": [], "content": []}
    for name in a:
        x, y = a[name](), b[name]()
        if x == y:
            kinds["bytes"].append(name)
            continue
        if name.endswith("index_info.json"):  # build_seconds is a measured time
            assert {**json.loads(x), "build_seconds": 0} == {**json.loads(y), "build_seconds": 0}, name
        else:
            raise AssertionError(f"{name} differs between {expected} and {actual}")
        kinds["content"].append(name)
    return kinds
