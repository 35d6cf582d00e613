"""`clipsieve materialize`: register the crawl's shards and materialize what is out of date.

Every run goes through Dagster (`dagster.materialize`) and is recorded in the instance, so
the UI shows it. Per-shard work is skipped for a (shard, asset) whose latest
materialization has the current code version (model id included), whose output file is
still in this lake and, for `samples`, whose crawl files have not changed (size and
mtime fingerprint); whatever is downstream of redone work is redone too. Cross-shard
assets run when any per-shard work ran or when they are themselves out of date; the
evaluation asset only when the crawl has a ground_truth.parquet.
"""

import time
from dataclasses import dataclass, field

import fsspec
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, Definitions, materialize

from orchestration.partitions import shard_partitions

CODE_VERSION_TAG = "dagster/code_version"
SAMPLES = AssetKey("samples")
# Runs log to the instance (the UI shows everything); the terminal gets warnings only.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass
class RunReport:
    shards: list[str]
    per_shard_runs: dict[str, list[str]] = field(default_factory=dict)  # shard -> asset keys materialized
    cross_shard_assets: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # what failed, one message per run
    seconds: float = 0.0


def _is_current(instance: DagsterInstance, key: AssetKey, code_version: str | None, lake_url: str,
                partition: str | None, fingerprint: str | None = None) -> bool:
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None), limit=1
    ).records
    if not records:
        return False
    event = records[0].asset_materialization
    if event is None or event.tags.get(CODE_VERSION_TAG) != code_version:
        return False
    # A run over a batch of shards records per-shard values in dicts.
    if fingerprint is not None:  # samples: the crawl shard must not have changed since
        if _value(event, "crawl_fingerprint", "crawl_fingerprints", partition) != fingerprint:
            return False
    path = _value(event, "path", "paths", partition)
    return isinstance(path, str) and path.startswith(lake_url + "/") and _exists(path)


def _value(event, single: str, per_partition: str, partition: str | None):
    if per_partition in event.metadata:
        return (getattr(event.metadata[per_partition], "value", None) or {}).get(partition)
    value = event.metadata.get(single)
    return getattr(value, "value", value)


def _failures(result) -> str:
    """Failed checks and steps of a run, one line each, for the terminal."""
    lines = []
    for event in result.all_events:
        evaluation = event.event_specific_data if event.event_type_value == "ASSET_CHECK_EVALUATION" else None
        if evaluation is not None and not evaluation.passed:
            values = {k: getattr(v, "value", v) for k, v in evaluation.metadata.items()}
            lines.append(f"  check {evaluation.asset_key.to_user_string()}:{evaluation.check_name} failed: "
                         f"{values.get('what')} = {values.get('value')} ({values.get('kind')} {values.get('bound')})")
        elif event.is_step_failure:
            error = event.step_failure_data.error
            while error.cause is not None:  # the user code's own error, not Dagster's wrapper
                error = error.cause
            lines.append(f"  step {event.step_key} failed: {error.message.strip()}")
        elif event.is_step_skipped:
            lines.append(f"  step {event.step_key} skipped (an upstream step or blocking check failed)")
    return "\n".join(lines)


def _exists(path: str) -> bool:
    fs, stripped = fsspec.core.url_to_fs(path)
    return fs.exists(stripped)


def _downstream_closure(defs: Definitions, keys: set[AssetKey], within: set[AssetKey]) -> set[AssetKey]:
    graph = defs.resolve_asset_graph()
    result, frontier = set(keys), list(keys)
    while frontier:
        for child in graph.get(frontier.pop()).child_keys:
            if child in within and child not in result:
                result.add(child)
                frontier.append(child)
    return result


def run_pipeline(defs: Definitions, instance: DagsterInstance, log=print) -> RunReport:
    """Register the crawl's complete shards, then materialize everything out of date."""
    started = time.time()
    resources = defs.resources
    crawl, lake = resources["crawl"], resources["lake"]
    shards = crawl.shards()
    if not shards:
        raise ValueError(f"no complete shards (tar + parquet + _stats.json) in {crawl.root}")
    known = set(instance.get_dynamic_partitions(shard_partitions.name))
    instance.add_dynamic_partitions(shard_partitions.name, [s for s in shards if s not in known])

    graph = defs.resolve_asset_graph()
    nodes = [graph.get(k) for k in graph.get_all_asset_keys() if graph.get(k).is_executable]
    per_shard = {n.key for n in nodes if n.partitions_def is not None}
    # Evaluation needs ground truth, which only the sample crawl (or a labelled crawl) has.
    skip = {"demo"} | (set() if _exists(crawl.file("ground_truth", ".parquet")) else {"evaluation"})
    cross_shard = {n.key for n in nodes if n.partitions_def is None and n.group_name not in skip}
    code_versions = {n.key: n.code_version for n in nodes}
    assets = list(defs.assets or [])
    report = RunReport(shards=shards)

    for shard in shards:
        fingerprint = crawl.fingerprint(shard)
        stale = {k for k in per_shard if not _is_current(instance, k, code_versions[k], lake.url, shard,
                                                          fingerprint if k == SAMPLES else None)}
        todo = _downstream_closure(defs, stale, per_shard)
        if not todo:
            continue
        log(f"shard {shard}: materializing {len(todo)} asset(s)")
        result = materialize(assets, instance=instance, partition_key=shard, selection=list(todo),
                             resources=resources, tags={"clipsieve/shard": shard}, run_config=QUIET,
                             raise_on_error=False)
        if not result.success:  # the other shards go on; the failure is reported at the end
            report.failures.append(f"run {result.run_id} for shard {shard} failed:\n" + _failures(result))
            log(report.failures[-1])
            continue
        report.per_shard_runs[shard] = sorted(k.to_user_string() for k in todo)

    stale = {k for k in cross_shard if not _is_current(instance, k, code_versions[k], lake.url, None)}
    if report.per_shard_runs or stale:
        todo = cross_shard if report.per_shard_runs else _downstream_closure(defs, stale, cross_shard)
        log(f"cross-shard: materializing {len(todo)} asset(s)")
        result = materialize(assets, instance=instance, selection=list(todo), resources=resources, run_config=QUIET,
                             raise_on_error=False)
        if not result.success:
            report.failures.append(f"cross-shard run {result.run_id} failed:\n" + _failures(result))
        report.cross_shard_assets = sorted(k.to_user_string() for k in todo)
    report.seconds = time.time() - started
    if report.failures:
        raise RuntimeError("\n".join(report.failures))
    return report
