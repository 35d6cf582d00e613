"""Asset checks on subsets, indices and audits: bounds per policy from a TOML file
(CurationFiles.checks; shipped: sql/policies/checks.toml), read when the definitions are built.

subset   nsfw_rate, duplicate_rate, group_removal_ratio
index    recall_at_10
audit    retrieval_skew (always a warning)

A policy's subset and index checks block only when its table in checks.toml says
`blocking = true` (the shipped file: `safe`). A failed blocking check has ERROR severity:
Dagster skips the subset's index and audit in that run, and `clipsieve export` refuses the
subset (it reads subsets/<policy>/checks.json). Every other failed check has WARN
severity: it shows in the UI and in `clipsieve materialize`'s summary, and the index,
audit and export go on. Policies that reproduce a published rule (LAION, DataComp,
MetaCLIP) warn, as real crawls exceed the bounds (near duplicates are about 30% of
LAION-2B) and the rule is what it is.
"""

import tomllib
from pathlib import Path

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetKey

# check name -> (bound name, "max" or "min", what the figure is)
SUBSET_CHECKS = {
    "nsfw_rate": ("max_nsfw_rate", "max", "share of members with punsafe > 0.5"),
    "duplicate_rate": ("max_duplicate_rate", "max", "share of members flagged by near_duplicates"),
    "group_removal_ratio": ("max_removal_ratio", "max", "largest caption-group removal rate / overall rate"),
}
INDEX_CHECKS = {"recall_at_10": ("min_recall_at_10", "min", "recall@10 against exact search")}
AUDIT_CHECKS = {"retrieval_skew": ("max_mean_max_skew", "max", "mean MaxSkew@k over the neutral prompts")}


def bounds(policy: str, path: str | Path) -> dict[str, float | bool]:
    """The check bounds of a policy, and its `blocking` flag: [default], replaced by its own
    table. No file: no checks."""
    path = Path(path)
    config = tomllib.loads(path.read_text()) if path.exists() else {}
    return {**config.get("default", {}), **config.get(policy, {})}


def is_blocking(limits: dict[str, float | bool]) -> bool:
    """Whether a policy (by its bounds) has subset and index checks that stop its index, audit and export."""
    return bool(limits.get("blocking", False))


def specs(asset_key: AssetKey, checks: dict, limits: dict[str, float | bool], blocking: bool) -> list[AssetCheckSpec]:
    return [
        AssetCheckSpec(name, asset=asset_key, blocking=blocking,
                       description=f"{what} {'at most' if kind == 'max' else 'at least'} {limits.get(bound)}"
                                   + ("" if blocking else " (warns)"))
        for name, (bound, kind, what) in checks.items() if bound in limits
    ]


def evaluate(checks: dict, limits: dict[str, float | bool], figures: dict[str, float | None],
             blocking: bool) -> list[AssetCheckResult]:
    """One result per configured check: passed when the figure is within its bound; a failed
    check has ERROR severity when `blocking`, else WARN."""
    results = []
    for name, (bound, kind, what) in checks.items():
        if bound not in limits:
            continue
        value, limit = figures.get(name), limits[bound]
        passed = value is None or (value <= limit if kind == "max" else value >= limit)
        results.append(AssetCheckResult(
            check_name=name,
            passed=bool(passed),
            severity=AssetCheckSeverity.ERROR if blocking else AssetCheckSeverity.WARN,
            metadata={"value": value if value is not None else "n/a", "bound": limit, "kind": kind, "what": what,
                      "blocking": blocking},
        ))
    return results


def summary(results: list[AssetCheckResult]) -> dict[str, dict]:
    """JSON-ready record of check results (written beside the subset for `clipsieve export`)."""
    return {
        r.check_name: {"passed": r.passed, **{k: getattr(v, "value", v) for k, v in r.metadata.items()}}
        for r in results
    }
