"""<policy>_subset: one asset per SQL policy file in sql/policies/ (lake: subsets/<policy>/).

A policy is DuckDB SQL over the catalog views: `SET VARIABLE name = value;` lines for its
parameters, then one SELECT returning the member keys (`key`, `shard`). A policy that sets
`sampling` draws a multiset instead: its SELECT returns candidates with a `score`, and
members are drawn by it, some several times (assets/sampling_policy.py); every subset's
members carry `draws` (1 for a filter policy). Parameters are
taken, in order, from the file, from the model's calibration file (a model whose
similarity scale differs from ViT-B/32's ships one: models/demo/calibration.json), and
from run config. Adding a policy is adding a file: the asset appears on reload.
"""

import json
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from assets.audits.metrics import before_after_figures
from assets.export import UID_DTYPE
from assets.sampling_policy import SamplingSpec, create_sampled_draws
from resources.catalog import SQL_DIR, Catalog, SqlLimits, interrupt_after, locked_connection, read_sql
from resources.clip_model import model_calibration
from resources.lake import (
    SUBSET_RECORD_KEY,
    LakeResource,
    committed_subset,
    members_path,
    prune_versions,
    subset_versions_dir,
    uids_path,
    with_metadata,
)
from resources.versions import text_digest

CODE_VERSION = "3"
POLICY_DIR = SQL_DIR / "policies"  # the shipped policies (CurationFiles.policy_dir picks the folder)
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_SET_VARIABLE = re.compile(r"^\s*SET\s+VARIABLE\s+([A-Za-z_][A-Za-z0-9_]*)\s*=", re.IGNORECASE)


@dataclass(frozen=True)
class Policy:
    name: str
    sql: str

    @property
    def parameters(self) -> list[str]:
        return [m.group(1) for line in self.sql.splitlines() if (m := _SET_VARIABLE.match(line))]

    def defaults(self) -> dict[str, object]:
        """The parameter values the file sets, evaluated by DuckDB (on a connection that can
        read no file: a value is an expression, and the file is untrusted)."""
        connection = locked_connection()
        try:
            with interrupt_after(connection, SqlLimits.timeout_seconds):
                for statement in connection.extract_statements(self.sql):
                    if statement.type == duckdb.StatementType.SET and \
                            _SET_VARIABLE.match(_uncommented(statement.query)):
                        connection.execute(statement.query)
                values = {name: connection.execute(f"SELECT getvariable('{name}')").fetchone()[0]
                          for name in self.parameters}
            return {k: float(v) if isinstance(v, Decimal) else v for k, v in values.items()}
        except duckdb.Error as error:
            raise ValueError(f"policy {self.name}: its SET VARIABLE values failed: {error}") from None
        finally:
            connection.close()

    def reads(self, view: str) -> bool:
        """Whether the policy's SQL names `view` (outside comments): a policy that reads an
        optional view (flyt_scores) depends on the asset that writes it."""
        return re.search(rf"\b{re.escape(view)}\b", _uncommented(self.sql), re.IGNORECASE) is not None

    def version(self, params: dict[str, object]) -> str:
        """Digest of the SQL and the parameters that replace its defaults."""
        return text_digest(self.sql + json.dumps(params, sort_keys=True))


def load_policies(folder: Path = POLICY_DIR, skipped: dict[str, str] | None = None) -> list[Policy]:
    """The policies in `folder`. A file that cannot be one (a name that is not lower_snake_case,
    a folder, a link, text that is not UTF-8) is skipped, with the reason in `skipped` and a
    warning: one bad file never stops the others. A link is never followed, so no file outside
    the folder is read (or quoted in an error)."""
    policies = []
    for path in sorted(folder.glob("*.sql")):
        reason = None
        if not _NAME.match(path.stem):
            reason = "policy file names must be lower_snake_case"
        elif path.is_symlink() or not path.is_file():
            reason = "not a regular file (links are not followed)"
        else:
            try:
                policies.append(Policy(path.stem, path.read_bytes().decode("utf-8")))
            except UnicodeDecodeError as error:
                reason = f"not UTF-8 text ({error.reason} at byte {error.start})"
        if reason:
            warnings.warn(f"skipping policy file {path.name!r}: {reason}", stacklevel=2)
            if skipped is not None:
                skipped[path.name] = reason
    return policies


def calibrated_params(checkpoint: str) -> dict[str, dict[str, object]]:
    """Per-policy parameters from a calibration.json beside a local checkpoint, if any."""
    return model_calibration(checkpoint).get("policy_params", {})


def effective_params(policy: Policy, calibration: dict[str, dict[str, object]]) -> dict[str, object]:
    """A policy's parameters: the file's values, replaced by the model's calibration."""
    return {**policy.defaults(), **calibration.get(policy.name, {})}


def _uncommented(sql: str) -> str:
    return "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))


def _sql_literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    try:
        return repr(float(text))
    except ValueError:
        return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class Members:
    """A policy's members in a local Parquet file: policy, key, shard, uid, draws, one row per
    member in (shard, key) order. Written a batch at a time, read back the same way or by DuckDB."""
    path: str
    num_rows: int

    @property
    def schema(self) -> pa.Schema:
        return pq.read_schema(self.path)

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """The whole file as a table (tests and small subsets)."""
        return pq.read_table(self.path, columns=columns)

    def dataset(self) -> ds.Dataset:
        """The file as a dataset DuckDB scans a batch at a time."""
        return ds.dataset(self.path, format="parquet")


def run_policy(catalog: Catalog, policy: Policy, params: dict[str, object],
               scratch: str, pool: int | None = None) -> tuple[Members, dict[str, str]]:
    """Members selected (or drawn) by the policy, written into the local folder `scratch`,
    and the parameters in effect; `pool`: the scored pool's size, when the caller has it.
    The policy's result goes to a file a batch at a time and is read back by DuckDB: the
    members are never a Python object, whatever the pool's size."""
    connection = catalog.connection
    try:
        statements = connection.extract_statements(policy.sql)
    except duckdb.Error as error:
        raise ValueError(f"policy {policy.name}: SQL does not parse: {error}") from None
    if not statements or statements[-1].type != duckdb.StatementType.SELECT:
        raise ValueError(f"policy {policy.name}: must end with one SELECT returning key, shard")
    unknown = sorted(set(params) - set(policy.parameters))
    if unknown:
        raise ValueError(f"policy {policy.name}: unknown parameter(s) {unknown}; it has {policy.parameters}")
    result = os.path.join(scratch, f"{policy.name}_result.parquet")
    try:
        for statement in statements[:-1]:
            if statement.type != duckdb.StatementType.SET or not _SET_VARIABLE.match(_uncommented(statement.query)):
                raise ValueError(f"policy {policy.name}: only SET VARIABLE may precede the SELECT, "
                                 f"found: {statement.query.strip()[:80]}")
            connection.execute(statement.query)
        for name, value in params.items():
            connection.execute(f"SET VARIABLE {name} = {_sql_literal(value)}")
        catalog.query_to_parquet(statements[-1].query, result)
    except duckdb.PermissionException as error:
        raise ValueError(f"policy {policy.name}: refused (policies may read only the lake): {error}") from None
    except duckdb.Error as error:
        raise ValueError(f"policy {policy.name}: query failed: {error}") from None
    effective = {
        name: str(connection.execute(f"SELECT getvariable('{name}')").fetchone()[0]) for name in policy.parameters
    }
    try:
        sampling = SamplingSpec.from_params(effective)
    except ValueError as error:
        raise ValueError(f"policy {policy.name}: {error}") from None
    required = {"key", "shard", "score"} if sampling else {"key", "shard"}
    missing = required - set(pq.read_schema(result).names)
    if missing:
        raise ValueError(f"policy {policy.name}: result lacks column(s) {sorted(missing)}")
    connection.register("policy_result", ds.dataset(result, format="parquet"))
    try:
        strays = connection.execute(read_sql("subsets/strays.sql")).fetchone()[0]
        if strays:
            raise ValueError(f"policy {policy.name}: {strays} returned key(s) are not in the scored pool")
        if sampling:
            if pool is None:
                pool = catalog.query(read_sql("subsets/pool_size.sql")).column("n")[0].as_py()
            try:
                create_sampled_draws(catalog, sampling, pool, scratch)
            except ValueError as error:
                raise ValueError(f"policy {policy.name}: {error}") from None
        else:
            connection.execute(read_sql("subsets/filtered_draws.sql"))
        # One row per member, in a stable order, with the crawl's uid when it has one.
        path = os.path.join(scratch, f"{policy.name}_members.parquet")
        rows = catalog.query_to_parquet(read_sql("subsets/members.sql"), path, {"policy": policy.name})
    finally:
        for name in ("policy_result", "sampling_candidates", "sampling_draws"):
            connection.unregister(name)
        os.remove(result)
    return Members(path, rows), effective


def subset_version(summary: pa.Table, params: dict[str, str]) -> str:
    """A candidate's version, from its summary (sql/subsets/summary.sql: member count and
    md5 sums per shard) and parameters: the same subset always gets the same version (and
    the same files) whichever run makes it."""
    return text_digest(json.dumps([summary.to_pylist(), params], sort_keys=True))


def candidate_figures(db: Catalog, policy: str, members: Members) -> dict:
    """The figures the subset checks read, for `members` before they are committed (the
    connection's subset_members is the candidate from then on: close it after)."""
    db.connection.register("candidate", members.dataset())
    db.connection.execute(read_sql("subsets/candidate_members.sql"))  # this connection's subset_members
    return before_after_figures(db, policy)


def uid_array(db: Catalog) -> np.ndarray:
    """DataComp's subset array for the registered `candidate` (sql/subsets/uids.sql): sorted
    (high, low) 64-bit halves of each member's 128-bit uid."""
    columns = db.connection.execute(read_sql("subsets/uids.sql")).fetchnumpy()
    array = np.empty(len(columns["high"]), dtype=UID_DTYPE)
    array["f0"], array["f1"] = columns["high"], columns["low"]
    return array


@dataclass(frozen=True)
class Candidate:
    """A policy's result before the checks decide whether it is committed."""
    members: Members  # policy, key, shard, uid, draws: one row per member in (shard, key) order
    params: dict[str, str]  # the parameters in effect
    figures: dict  # before_after_figures of the candidate against the pool
    pool: int  # samples in the scored pool
    version: str
    per_shard: dict[str, int]  # members of each shard, in shard order
    draws: int  # members counted as often as drawn (the member count for a filter policy)
    uids: np.ndarray  # DataComp's subset array


def select_candidate(catalog: Catalog, policy: Policy, params: dict[str, object], scratch: str) -> Candidate:
    """Run `policy` with `params` over the catalog's pool and measure what it keeps; its
    members are written into the local folder `scratch`. The catalog's subset_members is the
    candidate from then on: close it after."""
    pool = catalog.query(read_sql("subsets/pool_size.sql")).column("n")[0].as_py()
    members, effective = run_policy(catalog, policy, params, scratch, pool)
    figures = candidate_figures(catalog, policy.name, members)
    summary = catalog.query(read_sql("subsets/summary.sql"))
    per_shard = dict(zip(summary.column("shard").to_pylist(), summary.column("members").to_pylist()))
    return Candidate(members, effective, figures, pool, subset_version(summary, effective), per_shard,
                     sum(summary.column("draws").to_pylist()), uid_array(catalog))


def commit_subset(lake: LakeResource, policy: str, members: Members | pa.Table, version: str, record: dict,
                  uids: np.ndarray) -> None:
    """Write the version's files, then the members file that commits them (it carries
    `record` in its Parquet metadata; copied a batch at a time)."""
    lake.write_npy(uids_path(policy, version), uids)
    previous = (committed_subset(lake, policy) or {}).get("version")
    metadata = {SUBSET_RECORD_KEY: json.dumps(record, sort_keys=True)}
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "members.parquet")
        batches = members.to_batches() if isinstance(members, pa.Table) else \
            pq.ParquetFile(members.path).iter_batches(batch_size=100_000)
        schema = with_metadata(members.schema.empty_table(), metadata).schema
        with pq.ParquetWriter(local, schema, compression="zstd") as writer:
            for batch in batches:
                writer.write_batch(batch)
        lake.write_file(members_path(policy), local)
    prune_versions(lake, subset_versions_dir(policy), {version, previous})
