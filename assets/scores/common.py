"""What every score asset shares: which samples are scored, and how scores are written."""

from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc
from dagster import AssetExecutionContext, BackfillPolicy, MaterializeResult, asset

from assets.partitions import shard_partitions
from assets.table_metadata import table_metadata
from resources.lake import LakeResource, samples_path, score_path, with_metadata


def score_asset(code_version: str, compute_kind: str, batches: BackfillPolicy, deps: tuple[str, ...] = ("samples",),
                **kwargs):
    """The @asset declaration every per-shard score shares: scores/<name>, one partition per
    shard, run in batches of shards as `batches` says."""
    return asset(key_prefix="scores", partitions_def=shard_partitions, deps=list(deps), group_name="scores",
                 code_version=code_version, compute_kind=compute_kind, backfill_policy=batches, **kwargs)


def for_each_shard(context: AssetExecutionContext, compute: Callable[[str], dict]) -> MaterializeResult:
    """Run `compute(shard)` for every shard of the run; each shard's materialization gets
    the metadata its own call returned.

    A run covers one shard, or a range of them (a backfill under the assets' BackfillPolicy, or
    `clipsieve materialize` batching shards that need the same work); either way each
    partition's record reads as if it had run alone.
    """
    shards = context.partition_keys
    if len(shards) == 1:
        return MaterializeResult(metadata=compute(shards[0]))
    for shard in shards:
        context.add_asset_metadata(compute(shard), partition_key=shard)
    return MaterializeResult(metadata={"shards_in_run": len(shards)})


def usable_samples(lake: LakeResource, shard: str, columns: list[str] | None = None) -> pa.Table:
    """The shard's samples whose image is usable (image_status "ok"): the scoring pool."""
    table = lake.read_parquet(samples_path(shard))
    table = table.filter(pc.equal(table.column("image_status"), "ok"))
    return table.select(columns) if columns else table


def write_scores(lake: LakeResource, shard: str, filter_name: str, table: pa.Table,
                 model_id: str | None = None, file_metadata: dict[str, str] | None = None) -> dict:
    """Write one filter's scores (key, shard, score columns); return Dagster metadata.

    `file_metadata` goes into the Parquet file's key-value metadata (which head made the
    scores, for `clipsieve explain`)."""
    if table.column_names[:2] != ["key", "shard"]:
        raise ValueError(f"{filter_name}: score tables start with key, shard; got {table.column_names}")
    if file_metadata:
        table = with_metadata(table, file_metadata)
    path = score_path(shard, filter_name, model_id)
    lake.write_parquet(path, table)
    metadata: dict = {"rows": table.num_rows, "path": lake.path(path), **table_metadata(table)}
    if model_id is not None:
        metadata["model_id"] = model_id
    for name in table.column_names[2:]:
        column = table.column(name)
        if pa.types.is_floating(column.type) and table.num_rows:
            metadata[f"mean/{name}"] = float(pc.mean(column).as_py() or 0.0)
    return metadata
