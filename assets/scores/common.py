"""What every score shares: which samples are scored, and how scores are written."""

import hashlib

import pyarrow as pa
import pyarrow.compute as pc

from resources.lake import LakeResource, samples_path, score_path, with_metadata


def usable_samples(lake: LakeResource, shard: str, columns: list[str] | None = None) -> pa.Table:
    """The shard's samples whose image is usable (image_status "ok"): the scoring pool."""
    table = lake.read_parquet(samples_path(shard))
    table = table.filter(pc.equal(table.column("image_status"), "ok"))
    return table.select(columns) if columns else table


SCORES_DIGEST_KEY = "clipsieve.digest"  # Parquet metadata: a digest of the scores, for readers that cache


def table_digest(table: pa.Table) -> str:
    """A digest of a table's columns and rows (not its metadata)."""
    digest = hashlib.sha256()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema.remove_metadata()) as writer:
        writer.write_table(table.combine_chunks())
    digest.update(sink.getvalue())
    return digest.hexdigest()[:16]


def scores_digest(lake: LakeResource, shard: str, filter_name: str) -> str:
    """The digest a shard's score file carries (its footer only is read)."""
    return lake.parquet_metadata(score_path(shard, filter_name)).get(SCORES_DIGEST_KEY, "")


def write_scores(lake: LakeResource, shard: str, filter_name: str, table: pa.Table,
                 model_id: str | None = None, file_metadata: dict[str, str] | None = None) -> dict:
    """Write one filter's scores (key, shard, score columns); return their figures.

    `file_metadata` goes into the Parquet file's key-value metadata (which head made the
    scores, for `clipsieve explain`)."""
    if table.column_names[:2] != ["key", "shard"]:
        raise ValueError(f"{filter_name}: score tables start with key, shard; got {table.column_names}")
    table = with_metadata(table, {**(file_metadata or {}), SCORES_DIGEST_KEY: table_digest(table)})
    path = score_path(shard, filter_name, model_id)
    lake.write_parquet(path, table)
    metadata: dict = {"rows": table.num_rows, "path": lake.path(path)}
    if model_id is not None:
        metadata["model_id"] = model_id
    for name in table.column_names[2:]:
        column = table.column(name)
        if pa.types.is_floating(column.type) and table.num_rows:
            metadata[f"mean/{name}"] = float(pc.mean(column).as_py() or 0.0)
    return metadata
