"""A search saved as a policy file: the results' (key, shard) pairs and the score filters, as
SQL over the catalog views like every other policy (sql/policies/). On the next load it is
`subsets/<name>` with its checks; its SET VARIABLE lines can be tuned like any policy's.

The only write the service makes: a new file, named by a validated policy name, created
exclusively (never over an existing file), in the policy folder.
"""

import os
from pathlib import Path

from orchestration.serve.search import RANGE_COLUMNS, SAFE_MAX_PUNSAFE, Filters
from resources.safe_paths import check_policy_name

# Range filters the `scores` view can re-apply (pviolence is the service's own score).
VIEW_COLUMNS = tuple(c for c in RANGE_COLUMNS if c != "pviolence")


def _literal(value: str) -> str:
    """A SQL string literal (DuckDB's standard strings: a quote is doubled, nothing else escapes)."""
    return "'" + value.replace("'", "''") + "'"


def policy_sql(name: str, query: str, filters: Filters, found: list[dict], searched: int, when: str) -> str:
    """The policy's text: a header saying where it came from, the filters as parameters, and a
    SELECT of the found samples that still pass them."""
    check_policy_name(name)
    lines = [f"-- {name}: saved from clipsieve serve, {when}.",
             f"-- The {len(found)} nearest results of {query.replace(chr(10), ' ')[:200]} that passed the",
             f"-- filters ({searched} neighbours searched); the conditions below apply them again.",
             f"-- Safe mode: {filters.safe}; violence detector: {filters.violence}; one result per duplicate "
             f"group: {filters.deduplicate}."]
    conditions = []
    if filters.safe:
        lines.append(f"SET VARIABLE safe_max_punsafe = {SAFE_MAX_PUNSAFE};")
        conditions.append("s.punsafe <= getvariable('safe_max_punsafe')")
    for column, (low, high) in sorted(filters.ranges.items()):
        if column not in VIEW_COLUMNS:
            continue
        if low is not None:
            lines.append(f"SET VARIABLE min_{column} = {float(low)!r};")
            conditions.append(f"s.{column} >= getvariable('min_{column}')")
        if high is not None:
            lines.append(f"SET VARIABLE max_{column} = {float(high)!r};")
            conditions.append(f"s.{column} <= getvariable('max_{column}')")
    if filters.language:
        lines.append(f"SET VARIABLE language = {_literal(filters.language)};")
        conditions.append("s.language = getvariable('language')")
    values = ",\n    ".join(f"({_literal(row['key'])}, {_literal(row['shard'])})" for row in found) \
        or "(NULL, NULL)"
    lines += ["", "SELECT s.key, s.shard", "FROM scores AS s",
              f"JOIN (VALUES\n    {values}\n) AS found(key, shard) USING (key, shard)"]
    if conditions:
        lines.append("WHERE " + "\n  AND ".join(conditions))
    return "\n".join(lines) + ";\n"


def write_new(folder: Path, name: str, text: str) -> Path:
    """Create `folder`/<name>.sql with `text`; refused if any file of that name exists."""
    path = folder / f"{check_policy_name(name)}.sql"
    try:
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise ValueError(f"a policy file {path.name} exists already") from None
    with os.fdopen(handle, "w") as f:
        f.write(text)
    return path
