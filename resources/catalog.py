"""The catalog: DuckDB views (sql/views/*.sql) over the lake's Parquet files.

DuckDB is only the read side: partition runs write Parquet, never a shared database, so
parallel runs never contend for DuckDB's single writer. Each connection is in-memory and
built fresh from the view files, with `{{lake}}` and `{{model}}` filled in.

Policies and `clipsieve query` are untrusted SQL on that connection, so it is locked down
first (sql/catalog/lockdown.sql: only the lake may be read, no extensions, settings
locked) and untrusted text must be SELECT statements (`check_select`).
"""

import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from dagster import ConfigurableResource
from pydantic import Field

from resources.lake import LakeResource, pool_shards

SQL_DIR = Path(__file__).resolve().parents[1] / "sql"


def read_sql(relative: str) -> str:
    """Text of a file under sql/, e.g. read_sql("audits/rates.sql")."""
    return (SQL_DIR / relative).read_text()


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class SqlLimits:
    """What one catalog connection may use. Policies and `clipsieve query` are untrusted SQL:
    a cross join must end in a clear error, not in the kernel killing the process or the
    disk filling with spill files."""

    memory_limit: str = "4GB"  # DuckDB's memory_limit (its default is 80% of the machine)
    max_temp_directory_size: str = "16GB"  # spill files, in a private folder removed on close
    timeout_seconds: float = 600.0  # one statement; then the connection is interrupted


class SqlLimitError(ValueError):
    """A statement ran past SqlLimits.timeout_seconds (and was interrupted) or past its memory."""


@contextmanager
def interrupt_after(connection: duckdb.DuckDBPyConnection, seconds: float) -> Iterator[None]:
    """Interrupt what `connection` runs inside the block once it has run `seconds`."""
    timer = threading.Timer(seconds, connection.interrupt)
    timer.daemon = True
    timer.start()
    try:
        yield
    except duckdb.InterruptException:
        raise SqlLimitError(f"the statement ran over {seconds:g} s and was stopped (CatalogResource "
                              "timeout_seconds / clipsieve query --timeout)") from None
    finally:
        timer.cancel()


@dataclass
class Catalog:
    """A DuckDB connection with the catalog views; `missing` names views that could not be
    created (no files yet) and why."""

    connection: duckdb.DuckDBPyConnection
    missing: dict[str, str] = field(default_factory=dict)
    snapshot: bool = False  # `scores` is an in-memory copy of the scored pool (open_catalog)
    limits: SqlLimits = field(default_factory=SqlLimits)
    temp_directory: str | None = None  # the connection's private spill folder, removed on close
    left_out: dict[str, str] = field(default_factory=dict)  # shards out of the scored pool -> what they lack
    lake_path: str = ""
    model_id: str = ""

    def has_view(self, name: str) -> bool:
        """Whether the connection has the view `name` (an optional view exists once its files do)."""
        return bool(self.connection.execute(read_sql("catalog/has_view.sql"), {"name": name}).fetchone()[0])

    def lake_sql(self, relative: str) -> str:
        """A file under sql/ with its {{lake}} and {{model}} filled in, as the views are."""
        return read_sql(relative).replace("{{lake}}", _literal(self.lake_path.rstrip("/"))[1:-1]) \
            .replace("{{model}}", self.model_id)

    @contextmanager
    def _within_limits(self) -> Iterator[None]:
        """Run a statement under the statement timeout, with clear errors for the limits."""
        try:
            with interrupt_after(self.connection, self.limits.timeout_seconds):
                yield
        except duckdb.OutOfMemoryException as error:
            raise SqlLimitError(f"the statement needed more than memory_limit {self.limits.memory_limit} and "
                                  f"max_temp_directory_size {self.limits.max_temp_directory_size} allow: "
                                  f"{str(error).splitlines()[0]}") from None
        except duckdb.CatalogException as error:
            if self.missing:
                hints = "; ".join(f"{name}: {why}" for name, why in self.missing.items())
                raise duckdb.CatalogException(f"{error}\n(views not available yet: {hints})") from None
            raise

    def query(self, sql: str, parameters: list | dict | None = None) -> pa.Table:
        with self._within_limits():
            return self.connection.execute(sql, parameters if parameters is not None else []).fetch_arrow_table()

    def query_to_parquet(self, sql: str, path: str, parameters: list | dict | None = None,
                         batch_rows: int = 100_000) -> int:
        """Write a query's result to a local Parquet file a batch at a time (the result is
        never whole in memory: DuckDB spills within its limits, Python holds one batch); its
        row count. The connection cannot write files itself (lockdown.sql): Python does."""
        rows = 0
        with self._within_limits():
            reader = self.connection.execute(sql, parameters if parameters is not None else []) \
                .fetch_record_batch(batch_rows)
            with pq.ParquetWriter(path, reader.schema, compression="zstd") as writer:
                for batch in reader:
                    writer.write_batch(batch)
                    rows += batch.num_rows
        return rows

    def select(self, sql: str, what: str = "query") -> pa.Table:
        """Run one untrusted SELECT (e.g. `clipsieve query`); anything else is refused."""
        check_select(self.connection, sql, what)
        try:
            return self.query(sql)
        except duckdb.PermissionException as error:
            raise RefusedSQLError(f"{what} refused (only files in the lake may be read): {error}") from None

    def close(self) -> None:
        self.connection.close()
        if self.temp_directory:
            shutil.rmtree(self.temp_directory, ignore_errors=True)


class RefusedSQLError(ValueError):
    """Untrusted SQL that tried to do more than read the lake."""


# Statement types untrusted SQL may run. Writes (CREATE, INSERT, COPY, EXPORT), ATTACH,
# INSTALL/LOAD, SET and CALL all have other types; PRAGMAs that only report are SELECTs.
READ_ONLY_TYPES = frozenset({duckdb.StatementType.SELECT})


def check_select(connection: duckdb.DuckDBPyConnection, sql: str, what: str = "query") -> list:
    """The statements of `sql` if they are exactly one SELECT, else RefusedSQLError."""
    try:
        statements = connection.extract_statements(sql)
    except duckdb.Error as error:
        raise RefusedSQLError(f"{what}: SQL does not parse: {error}") from None
    if len(statements) != 1:
        raise RefusedSQLError(f"{what} refused: expected one SELECT statement, got {len(statements)}")
    if statements[0].type not in READ_ONLY_TYPES:
        raise RefusedSQLError(f"{what} refused: {statements[0].type.name} statements are not allowed, only "
                              f"SELECT (read-only): {statements[0].query.strip()[:80]}")
    return statements


def lockdown(connection: duckdb.DuckDBPyConnection, readable: list[str], limits: SqlLimits = SqlLimits(),
             temp_directory: str = "") -> None:
    """Let the connection read only under `readable` (folders or URL prefixes) from now on,
    within `limits`, spilling to `temp_directory` (a private folder; "": no spilling).

    DuckDB lets a connection read its temp directory whatever allowed_directories says, so
    the default `<cwd>/.tmp` would let `read_text('.tmp/...')` read files there: the temp
    directory is always set, to a folder only DuckDB writes to, or to none."""
    allowed = "[" + ", ".join(_literal(folder.rstrip("/") + "/") for folder in readable) + "]"
    connection.execute(read_sql("catalog/lockdown.sql")
                       .replace("{{allowed}}", allowed)
                       .replace("{{temp_directory}}", _literal(temp_directory))
                       .replace("{{memory_limit}}", _literal(limits.memory_limit))
                       .replace("{{max_temp_directory_size}}", _literal(limits.max_temp_directory_size)))


def locked_connection(limits: SqlLimits = SqlLimits()) -> duckdb.DuckDBPyConnection:
    """An in-memory connection that can read no file at all and never spills (for evaluating
    policy parameters)."""
    connection = duckdb.connect()
    lockdown(connection, [], limits)
    return connection


# The scored pool as last read (one per process: a local lake and model), with the lake's
# Parquet files as they were then (lake_fingerprint): the subsets and audits of one
# cross-shard run (a dozen steps in one process) copy it instead of each joining the lake's
# score files again. It stays in memory with the process: at most snapshot_max_rows samples.
_pools: dict[tuple[str, str], tuple[tuple, pa.Table]] = {}
_pools_lock = threading.Lock()


def lake_fingerprint(lake_path: str) -> tuple | None:
    """(name, inode, size, mtime) of every Parquet file under a local lake's shards/ folder
    (what the `scores` view reads); None for a lake that is not a local folder. Lake files
    are replaced by renaming a new file into place, so a rewrite has a new inode even where
    the filesystem's mtime is coarse."""
    protocol, path = fsspec.core.split_protocol(lake_path)
    if protocol not in (None, "file", "local"):
        return None
    files = []
    for found in sorted((Path(path) / "shards").rglob("*.parquet")):
        stat = found.stat()
        files.append((str(found), stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return tuple(files)


def _snapshot_scores(connection: duckdb.DuckDBPyConnection, lake_path: str, model_id: str) -> None:
    """The temp table `scores` (sql/catalog/snapshot_scores.sql), from the process's copy of
    the pool when the lake's files are as they were when it was read."""
    fingerprint = lake_fingerprint(lake_path)
    key = (lake_path, model_id)
    with _pools_lock:
        cached = _pools.get(key)
    if fingerprint is not None and cached is not None and cached[0] == fingerprint:
        connection.register("scores_read_before", cached[1])
        connection.execute(read_sql("catalog/snapshot_scores_copy.sql"))
        connection.unregister("scores_read_before")
        return
    connection.execute(read_sql("catalog/snapshot_scores.sql"))
    if fingerprint is not None:
        pool = connection.execute(read_sql("catalog/snapshot_rows.sql")).fetch_arrow_table()
        with _pools_lock:
            _pools.clear()  # one pool per process: the newest
            _pools[key] = (fingerprint, pool)


def open_catalog(lake: LakeResource | str, model_id: str, threads: int | None = None, snapshot_rows: int = 0,
                 limits: SqlLimits = SqlLimits()) -> Catalog:
    """A catalog over a lake (its resource, or a local folder or fsspec URL) for one model.

    `snapshot_rows` > 0: when the pool has at most that many embedded samples, the `scores`
    view is read once into memory (sql/catalog/snapshot_scores.sql) and queries read that;
    on a local lake the process keeps that copy for the next connection while the lake's
    Parquet files stay as they were. `limits`: memory, spill space and statement time.
    """
    lake = lake if isinstance(lake, LakeResource) else LakeResource(root=lake)
    lake_path = lake.url
    connection = duckdb.connect()
    if threads:
        connection.execute(f"SET threads = {int(threads)}")
    if not lake.is_local():  # DuckDB reads the lake through the same configured filesystem
        connection.register_filesystem(lake.filesystem())
    temp_directory = tempfile.mkdtemp(prefix="clipsieve-duckdb-")  # mode 0700: only this process writes there
    lockdown(connection, [lake_path], limits, temp_directory)
    catalog = Catalog(connection, limits=limits, temp_directory=temp_directory, lake_path=lake_path,
                      model_id=model_id)
    # The scored pool: shards with every per-shard output (sql/views/02_embeddings_index.sql).
    complete, catalog.left_out = pool_shards(lake, model_id)
    connection.register("pool_shards", pa.table({"shard": pa.array(complete, pa.string())}))
    lake_literal = _literal(lake_path.rstrip("/"))[1:-1]
    for view_file in sorted((SQL_DIR / "views").glob("*.sql")):
        sql = view_file.read_text().replace("{{lake}}", lake_literal).replace("{{model}}", model_id)
        try:
            connection.execute(sql)
        except (duckdb.IOException, duckdb.CatalogException, duckdb.BinderException) as error:
            name = view_file.stem.split("_", 1)[-1]
            catalog.missing[name] = str(error).splitlines()[0]
    if snapshot_rows > 0 and "scores" not in catalog.missing:
        pool = connection.execute(read_sql("catalog/embedded_count.sql")).fetchone()[0]
        if pool <= snapshot_rows:
            _snapshot_scores(connection, lake_path, model_id)
            catalog.snapshot = True
    return catalog


class CatalogResource(ConfigurableResource):
    """DuckDB settings for catalog connections."""

    threads: int = Field(default=0, description="DuckDB threads (0: DuckDB's default, all cores).")
    snapshot_max_rows: int = Field(
        default=1_000_000, description="Subsets and audits query the scored pool a dozen times a step: up to "
        "this many samples it is read into memory (a few hundred bytes a sample) instead of joining the lake's "
        "score files for every query, and on a local lake the process keeps that copy for the next step while "
        "the lake's Parquet files are unchanged. 0: never.",
    )

    memory_limit: str = Field(default=SqlLimits.memory_limit,
                              description="DuckDB memory_limit per connection (policy SQL runs on it).")
    max_temp_directory_size: str = Field(
        default=SqlLimits.max_temp_directory_size,
        description="Spill space per connection, in a private temporary folder removed when it closes.")
    timeout_seconds: float = Field(default=SqlLimits.timeout_seconds,
                                   description="A statement running longer is interrupted with an error.")

    def open(self, lake: LakeResource, model_id: str, snapshot: bool = False,
             memory_limit: str | None = None) -> Catalog:
        """A catalog connection; `snapshot`: with the scored pool in memory when it is small enough;
        `memory_limit`: DuckDB's, in place of the resource's (a step with a budget of its own)."""
        return open_catalog(lake, model_id, self.threads or None, self.snapshot_max_rows if snapshot else 0,
                            SqlLimits(memory_limit or self.memory_limit, self.max_temp_directory_size,
                                      self.timeout_seconds))
