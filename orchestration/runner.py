"""`clipsieve materialize`: register the crawl's shards and materialize what is out of date.

Every run goes through Dagster (`dagster.materialize`) and is recorded in the instance, so
the UI shows it. Shards that need the same assets and sit next to each other in the
partition order share a run (a partition range of up to $CLIPSIEVE_SHARDS_PER_RUN, as a
UI backfill batches them): creating a run (with its planned-materialization events) took
about 0.9 s on the 2-core machine, whatever its size, and every step has its own overhead.
A batch that fails is redone shard by shard, so one bad shard fails alone.

Per-shard work is skipped for a (shard, asset) whose latest materialization has the
current code version (model id included), whose output file is still in this lake and, for
`samples`, whose crawl files have not changed (size and mtime fingerprint); whatever is
downstream of redone work is redone too. Cross-shard assets run when any per-shard
materialization in the instance is newer than theirs (so per-shard work done by another
process, or by a run killed before its cross-shard stage, counts) or when they are
themselves out of date; the evaluation asset only when the crawl has a
ground_truth.parquet.

Killed and parallel runs: what is skipped is decided from materialization records and lake
files only, never from run status, so a run left STARTED by a killed process is no
obstacle; it is marked failed on the next start on the same host (its pid is in its tags).
Several processes may run disjoint shards over one lake and one instance at once
(`run_pipeline(..., shards=[...], cross_shard=False)`), then one cross-shard run.
"""

import time
from dataclasses import dataclass, field

import fsspec
from dagster import (
    AssetCheckSeverity,
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    Definitions,
    EventLogRecord,
    ExecuteInProcessResult,
    RunsFilter,
    materialize,
)
from sqlalchemy.exc import IntegrityError, OperationalError

from assets.partitions import SHARDS_PER_RUN, shard_partitions
from orchestration.definitions import OBSERVE_CRAWL_JOB
from resources.crawl import CrawlResource
from resources.lake import LakeResource, pool_shards
from resources.processes import is_gone, this_process
from resources.safe_paths import split_shard_names

CODE_VERSION_TAG = "dagster/code_version"
SAMPLES = AssetKey("samples")
EVALUATION = AssetKey("evaluation")
# Runs log to the instance (the UI shows everything); the terminal gets warnings only.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
# Who runs a run: lets a later start tell a killed process's run from a live one's.
HOST_TAG, PID_TAG = "clipsieve/host", "clipsieve/pid"
SHARDS_TAG = "clipsieve/shards"  # the run's shards, comma-separated
QUERY_CHUNK = 500  # partitions per staleness query (SQLite allows 32,766 bound parameters)

# The run tags that make a run cover a range of partitions: what `dagster asset materialize
# --partition-range` and Dagster's single-run backfills set (not exported as constants).
PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"


@dataclass
class RunReport:
    shards: list[str]
    per_shard_runs: dict[str, list[str]] = field(default_factory=dict)  # shard -> asset keys materialized
    cross_shard_assets: list[str] = field(default_factory=list)
    removed_shards: list[str] = field(default_factory=list)  # deleted from the crawl: out of the pool now
    failures: list[str] = field(default_factory=list)  # runs with a crashed step, one message per run
    blocked: list[str] = field(default_factory=list)  # failed blocking checks (their index, audit, export stop)
    warnings: list[str] = field(default_factory=list)  # failed checks that only warn
    orphaned_runs: list[str] = field(default_factory=list)  # runs of killed processes, now marked failed
    seconds: float = 0.0


class PipelineFailed(RuntimeError):
    """A step crashed (not a check that blocked). The report says what else happened."""

    def __init__(self, report: RunReport):
        super().__init__("\n".join(report.failures))
        self.report = report


CHECK_FAILED_ERROR = "DagsterAssetCheckFailedError"  # how Dagster stops a step whose blocking check failed


@dataclass
class RunOutcome:
    """One run's events sorted into what the summary and the exit status need."""

    crashed: list[str] = field(default_factory=list)  # steps that failed with an error of their own
    blocked: list[str] = field(default_factory=list)  # failed ERROR checks
    warnings: list[str] = field(default_factory=list)  # failed WARN checks
    skipped: list[str] = field(default_factory=list)  # steps not run (an upstream step or blocking check failed)


def run_outcome(result: ExecuteInProcessResult) -> RunOutcome:
    """Failed checks (by severity), crashed and skipped steps of a run, one line each."""
    outcome = RunOutcome()
    for event in result.all_events:
        evaluation = event.event_specific_data if event.event_type_value == "ASSET_CHECK_EVALUATION" else None
        if evaluation is not None and not evaluation.passed:
            values = {k: getattr(v, "value", v) for k, v in evaluation.metadata.items()}
            value = values.get("value")
            line = (f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}: {values.get('what')} = "
                    f"{f'{value:.4g}' if isinstance(value, float) else value} "
                    f"({values.get('kind')} {values.get('bound')})")
            (outcome.blocked if evaluation.severity == AssetCheckSeverity.ERROR else outcome.warnings).append(line)
        elif event.is_step_failure:
            error = event.step_failure_data.error
            if error is not None and error.cls_name == CHECK_FAILED_ERROR:
                continue  # the failed check itself is listed as blocked
            while error is not None and error.cause is not None:  # the user code's own error, not Dagster's wrapper
                error = error.cause
            outcome.crashed.append(f"step {event.step_key} failed: {error.message.strip() if error else '?'}")
        elif event.is_step_skipped:
            outcome.skipped.append(event.step_key)
    return outcome


def latest_materializations(instance: DagsterInstance, key: AssetKey,
                            partitions: list[str]) -> dict[str, EventLogRecord]:
    """The newest materialization record of `key` in each of `partitions` that has one.

    Two queries per asset key, whatever the number of shards: the latest storage id per
    partition, then those records. One query per (shard, asset) took about 5 ms on the
    2-core machine, which for 1,000 shards and 13 per-shard assets is a minute of deciding.
    """
    latest: dict[str, EventLogRecord] = {}
    for start in range(0, len(partitions), QUERY_CHUNK):
        chunk = partitions[start:start + QUERY_CHUNK]
        ids = instance.get_latest_storage_id_by_partition(key, DagsterEventType.ASSET_MATERIALIZATION, set(chunk))
        if ids:
            records = instance.fetch_materializations(
                AssetRecordsFilter(asset_key=key, storage_ids=list(ids.values())), limit=len(ids)).records
            latest.update({r.partition_key: r for r in records if r.partition_key is not None})
    return latest


def _latest_materialization(instance: DagsterInstance, key: AssetKey) -> EventLogRecord | None:
    records = instance.fetch_materializations(AssetRecordsFilter(asset_key=key), limit=1).records
    return records[0] if records else None


def is_current(record: EventLogRecord | None, code_version: str | None, lake_url: str,
               fingerprint: str | None = None, newer_than: int = 0) -> bool:
    """The materialization `record` has this code version, its output is in this lake, and it
    is newer than storage id `newer_than` (for samples: the crawl shard is unchanged)."""
    if record is None or record.storage_id < newer_than:
        return False
    event = record.asset_materialization
    if event is None or event.tags.get(CODE_VERSION_TAG) != code_version:
        return False
    # samples: the crawl shard must not have changed since
    if fingerprint is not None and _value(event, "crawl_fingerprint") != fingerprint:
        return False
    path = _value(event, "path")
    return isinstance(path, str) and path.startswith(lake_url + "/") and _exists(path)


def _value(event, name: str):
    value = event.metadata.get(name)
    return getattr(value, "value", value)


def _failures(outcome: RunOutcome) -> str:
    """A run's failed checks and steps, one line each, for the terminal."""
    return "\n".join([f"  check {line}" for line in outcome.blocked + outcome.warnings]
                     + [f"  {line}" for line in outcome.crashed]
                     + [f"  step {step} skipped (an upstream step or blocking check failed)"
                        for step in outcome.skipped])


def _latest_storage_id(instance: DagsterInstance, keys: set[AssetKey]) -> int:
    """Storage id of the newest materialization of any of `keys`, any partition (0: none)."""
    records = [_latest_materialization(instance, key) for key in keys]
    return max((r.storage_id for r in records if r is not None), default=0)


def register_shards(instance: DagsterInstance, shards: list[str], attempts: int = 8) -> None:
    """Add the shards as dynamic partitions. Parallel runs may add the same ones at once:
    Dagster's read-then-insert then loses the race (a unique-index or lock error), so read
    again and retry."""
    for attempt in range(attempts):
        known = set(instance.get_dynamic_partitions(shard_partitions.name))
        new = [s for s in shards if s not in known]
        if not new:
            return
        try:
            instance.add_dynamic_partitions(shard_partitions.name, new)
            return
        except (IntegrityError, OperationalError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * 2**attempt)


def remove_deleted_shards(instance: DagsterInstance, crawl: CrawlResource, lake: LakeResource,
                          present: set[str]) -> list[str]:
    """Partitions whose shard was deleted from the crawl (none of its files left): the partition
    is removed and the shard's lake files are moved out of shards/, so it leaves every view,
    subset, uid file and index on the cross-shard run that follows."""
    removed = []
    for shard in instance.get_dynamic_partitions(shard_partitions.name):
        if shard not in present and crawl.is_deleted(shard):
            lake.retire_shard(shard)
            instance.delete_dynamic_partition(shard_partitions.name, shard)
            removed.append(shard)
    return removed


def fail_orphaned_runs(instance: DagsterInstance) -> list[str]:
    """Mark failed the runs this host's killed `materialize` processes left STARTED.

    Only runs tagged with a pid of this host that is no longer running are touched: a run
    of a live process beside this one (parallel runs) keeps going.
    """
    host, _ = this_process()
    runs = instance.get_runs(RunsFilter(
        statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.NOT_STARTED],
        tags={HOST_TAG: host}))
    orphaned = []
    for run in runs:
        pid = run.tags.get(PID_TAG, "")
        if pid.isdigit() and is_gone(host, int(pid)):
            instance.report_run_failed(run, message=f"process {pid} on {host} ended without finishing the run "
                                                    "(killed); clipsieve materialize redoes what it had not recorded")
            orphaned.append(run.run_id)
    return orphaned


def _with_checked_parents(defs: Definitions, keys: set[AssetKey], within: set[AssetKey]) -> set[AssetKey]:
    """`keys` plus their ancestors in `within` that carry asset checks: an index is never
    redone without its subset, so the subset's blocking checks gate it in the same run."""
    graph = defs.resolve_asset_graph()
    result, frontier = set(keys), list(keys)
    while frontier:
        for parent in graph.get(frontier.pop()).parent_keys:
            if parent in within and parent not in result and graph.get(parent).check_keys:
                result.add(parent)
                frontier.append(parent)
    return result


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


def shard_batches(order: list[str], work: dict[str, set[AssetKey]],
                  size: int) -> list[tuple[list[str], set[AssetKey]]]:
    """Group the shards in `work` into runs: neighbours in the partition `order` (a run covers
    a partition range, every key between its ends) that need the same assets, `size` at most."""
    batches: list[tuple[list[str], set[AssetKey]]] = []
    previous = None  # the work of the shard before this one in `order` (None: it has none)
    for shard in order:
        todo = work.get(shard)
        if todo is not None and todo == previous and len(batches[-1][0]) < size:
            batches[-1][0].append(shard)
        elif todo is not None:
            batches.append(([shard], todo))
        previous = todo
    return batches


def _shards(batch: list[str]) -> str:
    """"shard 00003", or "shards 00000..00007 (8)" for a batch, in log lines and failures."""
    return f"shard {batch[0]}" if len(batch) == 1 else f"shards {batch[0]}..{batch[-1]} ({len(batch)})"


def run_pipeline(defs: Definitions, instance: DagsterInstance, log=print, shards: list[str] | None = None,
                 cross_shard: bool = True) -> RunReport:
    """Register the crawl's complete shards, then materialize everything out of date.

    `shards` limits the per-shard work to those shards (parallel processes take disjoint
    slices); `cross_shard=False` leaves the cross-shard assets to a later call.
    """
    started = time.time()
    resources = defs.resources
    crawl, lake = resources["crawl"], resources["lake"]
    complete, unsafe = split_shard_names(crawl.shards())
    if unsafe:  # a crawl file named e.g. "...tar" would make the shard "..": never a partition or a path
        log(f"skipping crawl shards with unsafe names: {unsafe[:10]}")
    if not complete:
        raise ValueError(f"no complete shards (tar + parquet + _stats.json) in {crawl.root}")
    unknown = sorted(set(shards or []) - set(complete))
    if unknown:
        raise ValueError(f"not complete shards of {crawl.root}: {unknown[:10]}")
    shards = [s for s in complete if shards is None or s in shards]
    report = RunReport(shards=shards, orphaned_runs=fail_orphaned_runs(instance))
    for run_id in report.orphaned_runs:
        log(f"run {run_id} of a killed process marked failed")
    register_shards(instance, shards)
    if len(shards) == len(complete):  # a run over the whole crawl (not a slice) notices deleted shards
        report.removed_shards = remove_deleted_shards(instance, crawl, lake, set(complete))
        for shard in report.removed_shards:
            log(f"shard {shard} is no longer in the crawl: its partition is removed and its lake files moved "
                "to retired/ (clipsieve gc deletes them)")
    host, pid = this_process()
    tags = {HOST_TAG: host, PID_TAG: str(pid)}
    # Dagster's view of the crawl: each registered shard's files observed (crawl_shard's data
    # versions), so the UI's staleness and the automation conditions see what changed.
    defs.resolve_job_def(OBSERVE_CRAWL_JOB).execute_in_process(instance=instance, tags=tags, run_config=QUIET)

    graph = defs.resolve_asset_graph()
    nodes = [graph.get(k) for k in graph.get_all_asset_keys() if graph.get(k).is_materializable]
    per_shard = {n.key for n in nodes if n.partitions_def is not None}
    # Evaluation needs ground truth, which only the sample crawl (or a labelled crawl) has.
    skip = set() if _exists(crawl.file("ground_truth", ".parquet")) else {"evaluation"}
    cross_shard_keys = {n.key for n in nodes if n.partitions_def is None and n.group_name not in skip}
    code_versions = {n.key: n.code_version for n in nodes}
    assets = list(defs.assets or [])

    def stale_work(of_shards: list[str]) -> dict[str, set[AssetKey]]:
        """shard -> the per-shard assets to redo there (shards with nothing to redo left out)."""
        latest = {key: latest_materializations(instance, key, of_shards) for key in per_shard}
        work = {}
        for shard in of_shards:
            fingerprint = crawl.fingerprint(shard)
            stale = {k for k in per_shard if not is_current(latest[k].get(shard), code_versions[k], lake.url,
                                                             fingerprint if k == SAMPLES else None)}
            if stale:
                work[shard] = _downstream_closure(defs, stale, per_shard)
        return work

    def run(batch: list[str], todo: set[AssetKey]):
        if len(batch) == 1:
            partition = {"partition_key": batch[0], "tags": {SHARDS_TAG: batch[0], **tags}}
        else:
            partition = {"tags": {PARTITION_RANGE_START_TAG: batch[0], PARTITION_RANGE_END_TAG: batch[-1],
                                  SHARDS_TAG: ",".join(batch), **tags}}
        return materialize(assets, instance=instance, selection=list(todo), resources=resources, run_config=QUIET,
                           raise_on_error=False, **partition)

    def failed(result, batch: list[str]) -> None:  # the other shards go on; failures are raised at the end
        report.failures.append(f"run {result.run_id} for {_shards(batch)} failed:\n"
                               + _failures(run_outcome(result)))
        log(report.failures[-1])

    work = stale_work(shards)
    order = instance.get_dynamic_partitions(shard_partitions.name)
    for batch, todo in shard_batches(order, work, SHARDS_PER_RUN):
        log(f"{_shards(batch)}: materializing {len(todo)} asset(s)")
        result = run(batch, todo)
        if result.success:
            report.per_shard_runs.update({shard: sorted(k.to_user_string() for k in todo) for shard in batch})
            continue
        retry = stale_work(batch) if len(batch) > 1 else {}
        if not retry:  # one shard, or a failure that left no work undone (a check): report it as it is
            failed(result, batch)
            continue
        log(f"run {result.run_id} for {_shards(batch)} failed; redoing them one by one to find the bad ones")
        for shard, again in retry.items():
            alone = run([shard], again)
            if alone.success:
                report.per_shard_runs[shard] = sorted(k.to_user_string() for k in again)
            else:
                failed(alone, [shard])

    # Any per-shard materialization newer than a cross-shard asset's, whichever process made
    # it (a parallel run, a run killed before this stage), makes that asset stale.
    newest_per_shard = _latest_storage_id(instance, per_shard)
    stale = {k for k in cross_shard_keys
             if not is_current(_latest_materialization(instance, k), code_versions[k], lake.url,
                               newer_than=newest_per_shard)}
    if cross_shard and (report.per_shard_runs or report.removed_shards or stale):
        todo = cross_shard_keys if report.per_shard_runs or report.removed_shards else \
            _downstream_closure(defs, _with_checked_parents(defs, stale, cross_shard_keys), cross_shard_keys)
        log(f"cross-shard: materializing {len(todo)} asset(s)")
        result = materialize(assets, instance=instance, selection=list(todo), resources=resources, run_config=QUIET,
                             tags=tags, raise_on_error=False)
        outcome = run_outcome(result)
        done = {event.asset_key for event in result.get_asset_materialization_events()}
        if EVALUATION in todo and EVALUATION not in done and outcome.blocked and not outcome.crashed:
            # A blocked subset stops everything below it in the run, evaluation included;
            # evaluation measures what exists, so it runs on its own.
            log("evaluation did not run below a blocked subset: materializing it on its own")
            outcome.crashed += run_outcome(materialize(assets, instance=instance, selection=[EVALUATION],
                                                      resources=resources, run_config=QUIET, tags=tags,
                                                      raise_on_error=False)).crashed
        report.blocked += outcome.blocked
        report.warnings += outcome.warnings
        _, left_out = pool_shards(lake, resources["clip"].model_id,
                                  instance.get_dynamic_partitions(shard_partitions.name))
        report.warnings += [f"shard {shard} left out of the cross-shard assets: {lacks}"
                            for shard, lacks in left_out.items()]
        if outcome.crashed:
            report.failures.append(f"cross-shard run {result.run_id} failed:\n" + _failures(outcome))
        report.cross_shard_assets = sorted(k.to_user_string() for k in todo)
    report.seconds = time.time() - started
    if report.failures:
        raise PipelineFailed(report)
    return report
