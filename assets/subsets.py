"""<policy>_subset: one asset per SQL policy file in sql/policies/ (lake: subsets/<policy>/).

A policy is DuckDB SQL over the catalog views: `SET VARIABLE name = value;` lines for its
parameters, then one SELECT returning the member keys (`key`, `shard`). Parameters are
taken, in order, from the file, from the model's calibration file (a model whose
similarity scale differs from ViT-B/32's ships one: models/demo/calibration.json), and
from run config. Adding a policy is adding a file: the asset appears on reload.
"""

import json
import os
import re
import warnings
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from assets.audits.metrics import before_after_figures
from assets.export import uid_array
from resources.catalog import SQL_DIR, Catalog, SqlLimits, interrupt_after, locked_connection, read_sql
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

CODE_VERSION = "1"
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
    calibration = Path(checkpoint).with_name("calibration.json")
    if not os.path.isfile(checkpoint) or not calibration.exists():
        return {}
    return json.loads(calibration.read_text()).get("policy_params", {})


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


def run_policy(catalog: Catalog, policy: Policy, params: dict[str, object]) -> tuple[pa.Table, dict[str, str]]:
    """Members (key, shard) selected by the policy, and the parameters in effect."""
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
    try:
        for statement in statements[:-1]:
            if statement.type != duckdb.StatementType.SET or not _SET_VARIABLE.match(_uncommented(statement.query)):
                raise ValueError(f"policy {policy.name}: only SET VARIABLE may precede the SELECT, "
                                 f"found: {statement.query.strip()[:80]}")
            connection.execute(statement.query)
        for name, value in params.items():
            connection.execute(f"SET VARIABLE {name} = {_sql_literal(value)}")
        members = catalog.query(statements[-1].query)
    except duckdb.PermissionException as error:
        raise ValueError(f"policy {policy.name}: refused (policies may read only the lake): {error}") from None
    except duckdb.Error as error:
        raise ValueError(f"policy {policy.name}: query failed: {error}") from None
    missing = {"key", "shard"} - set(members.column_names)
    if missing:
        raise ValueError(f"policy {policy.name}: result lacks column(s) {sorted(missing)}")
    effective = {
        name: str(connection.execute(f"SELECT getvariable('{name}')").fetchone()[0]) for name in policy.parameters
    }
    connection.register("policy_result", members.select(["key", "shard"]))
    strays = connection.execute(read_sql("subsets/strays.sql")).fetchone()[0]
    if strays:
        raise ValueError(f"policy {policy.name}: {strays} returned key(s) are not in the scored pool")
    # One row per member, in a stable order, with the DataComp uid when the crawl has one.
    members = connection.execute(read_sql("subsets/members.sql"), {"policy": policy.name}).fetch_arrow_table()
    connection.unregister("policy_result")
    return members, effective


def subset_version(members: pa.Table, params: dict[str, str]) -> str:
    """A candidate's version: a digest of its members and parameters, so the same subset
    always gets the same version (and the same files) whichever run makes it."""
    return text_digest(json.dumps([members.column("shard").to_pylist(), members.column("key").to_pylist(),
                                   params], sort_keys=True))


def candidate_figures(db: Catalog, policy: str, members: pa.Table) -> dict:
    """The figures the subset checks read, for `members` before they are committed (the
    connection's subset_members is the candidate from then on: close it after)."""
    db.connection.register("candidate", members.select(["policy", "key", "shard"]))
    db.connection.execute(read_sql("subsets/candidate_members.sql"))  # this connection's subset_members
    return before_after_figures(db, policy)


@dataclass(frozen=True)
class Candidate:
    """A policy's result before the checks decide whether it is committed."""
    members: pa.Table  # policy, key, shard, uid: one row per member in (shard, key) order
    params: dict[str, str]  # the parameters in effect
    figures: dict  # before_after_figures of the candidate against the pool
    pool: int  # samples in the scored pool
    version: str


def select_candidate(catalog: Catalog, policy: Policy, params: dict[str, object]) -> Candidate:
    """Run `policy` with `params` over the catalog's pool and measure what it keeps. The
    catalog's subset_members is the candidate from then on: close it after."""
    pool = catalog.query(read_sql("subsets/pool_size.sql")).column("n")[0].as_py()
    members, effective = run_policy(catalog, policy, params)
    figures = candidate_figures(catalog, policy.name, members)
    return Candidate(members, effective, figures, pool, subset_version(members, effective))


def members_per_shard(members: pa.Table) -> dict[str, int]:
    """Member count of each shard, in shard order."""
    counts = pc.value_counts(members.column("shard")).to_pylist()
    return {e["values"]: e["counts"] for e in sorted(counts, key=lambda e: e["values"])}


def commit_subset(lake: LakeResource, policy: str, members: pa.Table, version: str, record: dict) -> None:
    """Write the version's files, then the members file that commits them (it carries `record`)."""
    lake.write_npy(uids_path(policy, version), uid_array(members.column("uid").to_pylist(),
                                                         members.column("key").to_pylist(),
                                                         members.column("shard").to_pylist()))
    previous = (committed_subset(lake, policy) or {}).get("version")
    lake.write_parquet(members_path(policy),
                       with_metadata(members, {SUBSET_RECORD_KEY: json.dumps(record, sort_keys=True)}))
    prune_versions(lake, subset_versions_dir(policy), {version, previous})
