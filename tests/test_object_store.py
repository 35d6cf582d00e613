"""The lake on S3-compatible storage, against a real S3 server on loopback (moto's server
mode, tests/s3_server.py): whole objects only, ranged reads, listings that see other
writers, and DuckDB reading the lake through the same configured filesystem."""

import numpy as np
import pyarrow as pa
import pytest

from resources.catalog import open_catalog
from resources.lake import LakeResource
from tests.s3_server import bucket_filesystem


@pytest.fixture
def lake(s3, request) -> LakeResource:
    """A lake in its own prefix, configured through the resource's fields (not the environment)."""
    return LakeResource(root=f"s3://{s3['bucket']}/{request.node.name}", s3_endpoint_url=s3["endpoint"],
                        s3_access_key_id=s3["env"]["AWS_ACCESS_KEY_ID"],
                        s3_secret_access_key=s3["env"]["AWS_SECRET_ACCESS_KEY"])


def test_files_round_trip_and_ranged_reads_read_only_their_rows(lake):
    lake.write_bytes("a/b.bin", b"whole")
    assert lake.read_bytes("a/b.bin") == b"whole" and lake.exists("a/b.bin")
    array = np.arange(40_000, dtype=np.float32).reshape(10_000, 4)
    lake.write_npy_parts("rows.npy", array.shape, array.dtype, np.array_split(array, 7))
    np.testing.assert_array_equal(lake.read_npy("rows.npy"), array)
    np.testing.assert_array_equal(lake.read_npy_runs("rows.npy", [(5, 9), (9_998, 20_000)]),
                                  np.concatenate([array[5:9], array[9_998:]]))
    assert lake.path("rows.npy") == f"{lake.root}/rows.npy" and not lake.is_local()


def test_a_write_that_fails_midway_publishes_nothing_and_leaves_no_upload(lake, s3):
    """12 MiB in parts (a multipart upload) that fails after the second part: the object
    never appears and the started upload is aborted; the previous object stays whole."""
    lake.write_bytes("big.npy", b"previous")
    part = np.ones((1024, 1024), np.float32)  # 4 MiB

    def parts():
        yield part
        yield part
        raise OSError("the source went away")

    with pytest.raises(OSError, match="went away"):
        lake.write_npy_parts("big.npy", (3 * 1024, 1024), np.float32, parts())
    with pytest.raises(OSError, match="went away"):
        lake.write_npy_parts("never.npy", (3 * 1024, 1024), np.float32, parts())
    assert lake.read_bytes("big.npy") == b"previous" and not lake.exists("never.npy")
    fs = bucket_filesystem(s3)
    assert fs.list_multipart_uploads(s3["bucket"]) == []
    assert not [p for p in fs.find(s3["bucket"]) if ".tmp-" in p]  # nothing written beside the final names


def test_a_listing_sees_what_another_writer_wrote_since(lake, s3):
    lake.write_bytes("shards/00000/samples.parquet", b"x")
    assert lake.glob("shards/*/samples.parquet") == ["shards/00000/samples.parquet"]
    other = bucket_filesystem(s3)  # another worker's client
    other.pipe_file(f"{lake.root.removeprefix('s3://')}/shards/00001/samples.parquet", b"y")
    assert lake.glob("shards/*/samples.parquet") == ["shards/00000/samples.parquet", "shards/00001/samples.parquet"]
    assert lake.exists("shards/00001/samples.parquet")


def test_duckdb_reads_the_lake_through_the_configured_filesystem(lake):
    table = pa.table({"key": ["a", "b", "c"], "value": [1.0, 2.0, 3.0]})
    for shard in ("00000", "00001"):
        lake.write_parquet(f"shards/{shard}/scores/quality.parquet", table)
    catalog = open_catalog(lake, "no-model")
    try:
        rows = catalog.connection.execute(
            f"SELECT count(*), sum(value) FROM read_parquet('{lake.root}/shards/*/scores/quality.parquet')").fetchone()
        assert rows == (6, 12.0)
    finally:
        catalog.close()


def test_the_catalog_reads_nothing_outside_the_lake_prefix(lake, s3):
    """lockdown's allowed prefixes hold for object-store paths as for folders."""
    other = LakeResource(root=f"s3://{s3['bucket']}/elsewhere", s3_endpoint_url=s3["endpoint"],
                         s3_access_key_id=s3["env"]["AWS_ACCESS_KEY_ID"],
                         s3_secret_access_key=s3["env"]["AWS_SECRET_ACCESS_KEY"])
    other.write_parquet("secret.parquet", pa.table({"x": [1]}))
    lake.write_parquet("mine.parquet", pa.table({"x": [2]}))
    catalog = open_catalog(lake, "no-model")
    try:
        assert catalog.connection.execute(f"SELECT x FROM '{lake.root}/mine.parquet'").fetchone() == (2,)
        with pytest.raises(Exception, match="(?i)permission|not allowed|disabled"):
            catalog.connection.execute(f"SELECT x FROM '{other.root}/secret.parquet'").fetchone()
    finally:
        catalog.close()
