"""The catalog: DuckDB views (sql/views/*.sql) over the lake's Parquet files.

DuckDB is only the read side: partition runs write Parquet, never a shared database, so
parallel runs never contend for DuckDB's single writer. Each connection is in-memory and
built fresh from the view files, with `{{lake}}` and `{{model}}` filled in.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import fsspec
import pyarrow as pa
from dagster import ConfigurableResource
from pydantic import Field

SQL_DIR = Path(os.environ.get("CLIPSIEVE_SQL_DIR", Path(__file__).resolve().parents[1] / "sql"))


def read_sql(relative: str) -> str:
    """Text of a file under sql/, e.g. read_sql("audits/rates.sql")."""
    return (SQL_DIR / relative).read_text()


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass
class Catalog:
    """A DuckDB connection with the catalog views; `missing` names views that could not be
    created (no files yet) and why."""

    connection: duckdb.DuckDBPyConnection
    missing: dict[str, str] = field(default_factory=dict)

    def query(self, sql: str, parameters: list | dict | None = None) -> pa.Table:
        try:
            return self.connection.execute(sql, parameters if parameters is not None else []).fetch_arrow_table()
        except duckdb.CatalogException as error:
            if self.missing:
                hints = "; ".join(f"{name}: {why}" for name, why in self.missing.items())
                raise duckdb.CatalogException(f"{error}\n(views not available yet: {hints})") from None
            raise

    def close(self) -> None:
        self.connection.close()


def open_catalog(lake_path: str, model_id: str, threads: int | None = None) -> Catalog:
    """A catalog over the lake at `lake_path` (local folder or fsspec URL) for one model."""
    connection = duckdb.connect()
    if threads:
        connection.execute(f"SET threads = {int(threads)}")
    protocol = fsspec.core.split_protocol(lake_path)[0]
    if protocol not in (None, "file", "local"):
        connection.register_filesystem(fsspec.filesystem(protocol))
    catalog = Catalog(connection)
    lake_literal = _literal(lake_path.rstrip("/"))[1:-1]
    for view_file in sorted((SQL_DIR / "views").glob("*.sql")):
        sql = view_file.read_text().replace("{{lake}}", lake_literal).replace("{{model}}", model_id)
        try:
            connection.execute(sql)
        except (duckdb.IOException, duckdb.CatalogException, duckdb.BinderException) as error:
            name = view_file.stem.split("_", 1)[-1]
            catalog.missing[name] = str(error).splitlines()[0]
    return catalog


class CatalogResource(ConfigurableResource):
    """DuckDB settings for catalog connections."""

    threads: int = Field(default=0, description="DuckDB threads (0: DuckDB's default, all cores).")

    def open(self, lake_path: str, model_id: str) -> Catalog:
        return open_catalog(lake_path, model_id, self.threads or None)
