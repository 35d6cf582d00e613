"""Dagster's table metadata for an asset's Parquet output: the row count and the column
schema under the keys the UI shows in its own places (`dagster/row_count`,
`dagster/column_schema`)."""

import pyarrow as pa
from dagster import MetadataValue, TableColumn, TableSchema

from assets.subsets import Members

ROW_COUNT = "dagster/row_count"
COLUMN_SCHEMA = "dagster/column_schema"


def table_metadata(table: pa.Table | Members) -> dict:
    """Row count and column schema of `table`, or of a subset's members file (column types
    as Arrow names them)."""
    return {
        ROW_COUNT: MetadataValue.int(table.num_rows),
        COLUMN_SCHEMA: MetadataValue.table_schema(TableSchema(columns=[
            TableColumn(name=field.name, type=str(field.type)) for field in table.schema])),
    }
