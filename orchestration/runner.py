"""`clipsieve materialize`: register the crawl's shards and have Dagster bring them up to date.

1. The crawl's complete shards become partitions (deleted ones are retired), and the
   `observe_crawl` job records each shard's file fingerprint as `crawl_shard`'s data version.
2. Dagster says what is out of date: the UI's own stale status (FRESH, STALE or MISSING)
   of every per-shard asset in every shard, from the webserver's GraphQL API. A shard's
   work is what Dagster reports STALE or MISSING there plus everything below it (Dagster
   marks only the direct children of a change stale).
3. Shards needing the same assets, neighbours in the partition order, share a run, as many
   as the assets' `BackfillPolicy` allows (a partition-range run, as a UI backfill makes).
   Runs are launched through the webserver, so the instance's run coordinator and launcher
   (and the job's executor) run them, as for a run launched from the UI; `in_process=True`
   executes them in this process instead (tests, laptops). A batch that fails is redone
   shard by shard, so one bad shard fails alone.
   Per-shard assets below a cross-shard asset (a shard's near-duplicate assignment needs the
   pool's centroids) run in a later stage, after it: per-shard, cross-shard, per-shard, ...
4. Cross-shard assets run after any per-shard work or retired shard, when Dagster reports
   them STALE or MISSING, or when a per-shard asset has a materialization newer than theirs
   (per-shard work by another process: Dagster's own staleness stops following
   partitioned parents above 100 partitions). Evaluation runs only when the crawl has a
   ground_truth.parquet.

Killed runs: what to do is decided from materializations and data versions only, never
from run status. A run executing in a killed `materialize --in-process` is marked failed on
the next start on the same host (its pid is in its tags); a launched run outlives the
command, and one whose worker died is failed by Dagster's run monitoring where the run
launcher supports it (docs/robustness.md).
"""

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from dagster import (
    AssetCheckSeverity,
    AssetKey,
    AssetRecordsFilter,
    DagsterEvent,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    Definitions,
    RunsFilter,
)
from sqlalchemy.exc import IntegrityError, OperationalError

from assets.definitions.flyt import FLYT_GROUP
from assets.definitions.partitions import shard_partitions
from assets.definitions.proxy import PROXY_GROUP
from orchestration.dagster_server import DagsterServer
from orchestration.definitions import CROSS_SHARD_JOB, FLYT_JOB, OBSERVE_CRAWL_JOB, PER_SHARD_JOB
from resources.crawl import CrawlResource
from resources.lake import LakeResource, pool_shards
from resources.processes import is_gone, this_process
from resources.safe_paths import split_shard_names

EVALUATION = AssetKey("evaluation")
# In-process runs log to the instance (the UI shows everything); the terminal gets warnings only.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
# Who runs an in-process run: lets a later start tell a killed process's run from a live one's.
HOST_TAG, PID_TAG = "clipsieve/host", "clipsieve/pid"
SHARDS_TAG = "clipsieve/shards"  # the run's shards, comma-separated
STALE_CHUNK = 500  # partitions per staleness query
POLL_SECONDS = 0.5
PROGRESS_SECONDS = 30.0  # how often a launched run that is still going is reported
QUEUED_SECONDS = 60.0  # a run queued this long: say that a dagster-daemon dequeues queued runs
DONE = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
OUT_OF_DATE = {"STALE", "MISSING"}

# The run tags of a run over one partition or a range of partitions: what the UI's launchpad
# and Dagster's single-run backfills set (not exported as constants).
PARTITION_TAG = "dagster/partition"
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

    success: bool = True
    materialized: set[AssetKey] = field(default_factory=set)
    crashed: list[str] = field(default_factory=list)  # steps that failed with an error of their own
    blocked: list[str] = field(default_factory=list)  # failed ERROR checks
    warnings: list[str] = field(default_factory=list)  # failed WARN checks
    skipped: list[str] = field(default_factory=list)  # steps not run (an upstream step or blocking check failed)


def run_outcome(events: Iterable[DagsterEvent], success: bool) -> RunOutcome:
    """Failed checks (by severity), crashed and skipped steps of a run, one line each."""
    outcome = RunOutcome(success=success)
    steps_failed = False
    for event in events:
        evaluation = event.event_specific_data if event.event_type_value == "ASSET_CHECK_EVALUATION" else None
        if event.is_step_materialization:
            outcome.materialized.add(event.asset_key)
        elif evaluation is not None and not evaluation.passed:
            values = {k: getattr(v, "value", v) for k, v in evaluation.metadata.items()}
            value = values.get("value")
            line = (f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}: {values.get('what')} = "
                    f"{f'{value:.4g}' if isinstance(value, float) else value} "
                    f"({values.get('kind')} {values.get('bound')})")
            (outcome.blocked if evaluation.severity == AssetCheckSeverity.ERROR else outcome.warnings).append(line)
        elif event.is_step_failure:
            steps_failed = True
            error = event.step_failure_data.error
            if error is not None and error.cls_name == CHECK_FAILED_ERROR:
                continue  # the failed check itself is listed as blocked
            while error is not None and error.cause is not None:  # the user code's own error, not Dagster's wrapper
                error = error.cause
            outcome.crashed.append(f"step {event.step_key} failed: {error.message.strip() if error else '?'}")
        elif event.is_step_skipped:
            outcome.skipped.append(event.step_key)
        elif event.is_run_failure and not steps_failed:  # no step to blame: the run's worker failed
            outcome.crashed.append(f"run failed: {event.message}")
    return outcome


def _failures(outcome: RunOutcome) -> str:
    """A run's failed checks and steps, one line each, for the terminal."""
    return "\n".join([f"  check {line}" for line in outcome.blocked + outcome.warnings]
                     + [f"  {line}" for line in outcome.crashed]
                     + [f"  step {step} skipped (an upstream step or blocking check failed)"
                        for step in outcome.skipped])


def partition_tags(shards: list[str]) -> dict[str, str]:
    """The tags of a run over `shards` (neighbours in the partition order)."""
    if len(shards) == 1:
        return {PARTITION_TAG: shards[0], SHARDS_TAG: shards[0]}
    return {PARTITION_RANGE_START_TAG: shards[0], PARTITION_RANGE_END_TAG: shards[-1], SHARDS_TAG: ",".join(shards)}


class InstanceRuns:
    """Runs launched through the webserver: the instance's run coordinator and launcher run
    them (a process of their own by default, a cluster task where dagster.yaml says so)."""

    def __init__(self, server: DagsterServer, instance: DagsterInstance, log: Callable[[str], None]):
        self.server, self.instance, self.log = server, instance, log

    def run(self, job: str, keys: set[AssetKey] | None, tags: dict[str, str]) -> tuple[str, RunOutcome]:
        run_id = self.server.launch_run(job, None if keys is None else [k.path for k in sorted(keys)], tags)
        started = last_report = time.time()
        said_queued = False
        while (run := self.instance.get_run_by_id(run_id)).status not in DONE:
            time.sleep(POLL_SECONDS)
            waited = time.time() - started
            if run.status == DagsterRunStatus.QUEUED and waited > QUEUED_SECONDS and not said_queued:
                said_queued = True
                self.log(f"  run {run_id} is still queued: the instance's run coordinator queues runs for a "
                         "dagster-daemon to start (is one running for this DAGSTER_HOME? `make ui` starts one; "
                         "or use --in-process)")
            elif time.time() - last_report > PROGRESS_SECONDS:
                last_report = time.time()
                done = len(self.instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION))
                self.log(f"  run {run_id} ({job}): {run.status.value.lower()} for {waited:.0f} s, "
                         f"{done} materialization(s) so far")
        events = [entry.dagster_event for entry in self.instance.all_logs(run_id) if entry.dagster_event]
        return run_id, run_outcome(events, run.status == DagsterRunStatus.SUCCESS)


class InProcessRuns:
    """Runs executed in this process, each job with the in-process executor."""

    def __init__(self, defs: Definitions, instance: DagsterInstance):
        self.defs, self.instance = defs, instance
        host, pid = this_process()
        self.tags = {HOST_TAG: host, PID_TAG: str(pid)}

    def run(self, job: str, keys: set[AssetKey] | None, tags: dict[str, str]) -> tuple[str, RunOutcome]:
        tags = {**tags, **self.tags}
        partition = tags.pop(PARTITION_TAG, None)
        result = self.defs.resolve_job_def(job).execute_in_process(
            instance=self.instance, asset_selection=None if keys is None else sorted(keys), partition_key=partition,
            tags=tags, run_config=QUIET, raise_on_error=False)
        return result.run_id, run_outcome(result.all_events, result.success)


def _latest_storage_id(instance: DagsterInstance, keys: set[AssetKey]) -> int:
    """Storage id of the newest materialization of any of `keys`, any partition (0: none)."""
    ids = []
    for key in keys:
        records = instance.fetch_materializations(AssetRecordsFilter(asset_key=key), limit=1).records
        ids += [r.storage_id for r in records]
    return max(ids, default=0)


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
    """Mark failed the runs this host's killed in-process `materialize` left STARTED.

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


def _relatives(defs: Definitions, keys: set[AssetKey], within: set[AssetKey], down: bool,
               only_checked: bool = False) -> set[AssetKey]:
    """`keys` plus their descendants (`down`) or ancestors in `within`; `only_checked`: only
    ancestors that carry asset checks."""
    graph = defs.resolve_asset_graph()
    result, frontier = set(keys), list(keys)
    while frontier:
        node = graph.get(frontier.pop())
        for other in node.child_keys if down else node.parent_keys:
            if other in within and other not in result and (not only_checked or graph.get(other).check_keys):
                result.add(other)
                frontier.append(other)
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


def stages(defs: Definitions, keys: set[AssetKey]) -> list[set[AssetKey]]:
    """`keys` in the order runs must take them: per-shard assets, then cross-shard assets, then
    per-shard assets below those (a shard's near-duplicate assignment needs the pool's
    centroids), and so on. An asset's stage counts the changes between per-shard and
    cross-shard along its longest path from the top; per-shard stages are the even ones."""
    graph = defs.resolve_asset_graph()
    stage: dict[AssetKey, int] = {}

    def of(key: AssetKey) -> int:
        if key not in stage:
            node = graph.get(key)
            partitioned = node.partitions_def is not None
            own = 0 if partitioned else 1
            for parent in node.parent_keys:
                if parent in keys:
                    switch = (graph.get(parent).partitions_def is not None) != partitioned
                    own = max(own, of(parent) + switch)
            stage[key] = own
        return stage[key]

    for key in keys:
        of(key)
    return [{k for k in keys if stage[k] == number} for number in range(max(stage.values(), default=-1) + 1)]


@dataclass
class Plan:
    """What the definitions say about the work: the per-shard and cross-shard assets (evaluation
    only when the crawl has ground truth) in the stages runs take them, and how many shards a
    run may take."""

    defs: Definitions
    per_shard: set[AssetKey]
    cross_shard: set[AssetKey]
    shards_per_run: int
    stages: list[set[AssetKey]] = field(default_factory=list)

    @classmethod
    def of(cls, defs: Definitions, crawl: CrawlResource, flyt: bool = False) -> "Plan":
        graph = defs.resolve_asset_graph()
        # Evaluation needs ground truth, which only the sample crawl (or a labelled crawl) has;
        # FLYT trains a model, so it runs when asked for; the downstream proxy trains one per
        # subset, so only `clipsieve proxy` or the UI runs it.
        skip = {PROXY_GROUP} if crawl.has_ground_truth() else {"evaluation", PROXY_GROUP}
        if not flyt:
            skip.add(FLYT_GROUP)
        nodes = [graph.get(k) for k in graph.get_all_asset_keys()
                 if graph.get(k).is_materializable and graph.get(k).group_name not in skip]
        per_shard = {n.key for n in nodes if n.partitions_def is not None}
        # A single-run policy (no maximum) puts every shard in one run.
        shards_per_run = min(n.backfill_policy.max_partitions_per_run or sys.maxsize for n in nodes
                             if n.key in per_shard and n.backfill_policy is not None)
        cross_shard = {n.key for n in nodes if n.partitions_def is None}
        return cls(defs, per_shard, cross_shard, shards_per_run, stages(defs, per_shard | cross_shard))

    def stale_work(self, server: DagsterServer, shards: list[str],
                   keys: set[AssetKey] | None = None) -> dict[str, set[AssetKey]]:
        """shard -> the per-shard assets (of `keys`, default all) to redo there: what Dagster
        reports STALE or MISSING and everything below it (shards with nothing to redo left out)."""
        keys = self.per_shard if keys is None else keys
        # Per-shard parents from an earlier stage: a shard where one is missing (its step
        # failed) cannot run this stage, and is left out of the pool until it is redone.
        graph = self.defs.resolve_asset_graph()
        parents = {p for k in keys for p in graph.get(k).parent_keys if p in self.per_shard} - keys
        work = {}
        for start in range(0, len(shards), STALE_CHUNK):
            chunk = shards[start:start + STALE_CHUNK]
            statuses = server.stale_by_partition([k.path for k in keys | parents], chunk)
            for shard in chunk:
                if any(statuses[(p.to_user_string(), shard)] == "MISSING" for p in parents):
                    continue
                out_of_date = {k for k in keys if statuses[(k.to_user_string(), shard)] in OUT_OF_DATE}
                if out_of_date:
                    work[shard] = _relatives(self.defs, out_of_date, keys, down=True)
        return work

    def cross_shard_work(self, server: DagsterServer, instance: DagsterInstance,
                         keys: set[AssetKey]) -> set[AssetKey]:
        """The cross-shard assets of `keys` Dagster reports STALE or MISSING, or older than a
        materialization of a per-shard asset above them (work of another process: a parallel
        slice, a killed run), with the checked parents that gate them and everything below them."""
        statuses = server.stale([k.path for k in keys])
        out_of_date = {k for k in keys if statuses[k.to_user_string()] in OUT_OF_DATE}
        newest = {k: _latest_storage_id(instance, {k}) for k in self.per_shard}
        for key in keys - out_of_date:
            above = _relatives(self.defs, {key}, self.per_shard | {key}, down=False) - {key}
            if _latest_storage_id(instance, {key}) < max((newest[k] for k in above), default=0):
                out_of_date.add(key)
        if not out_of_date:
            return set()
        # An index is never redone without its subset: the subset's blocking checks gate it in the same run.
        gated = _relatives(self.defs, out_of_date, keys, down=False, only_checked=True)
        return _relatives(self.defs, gated, keys, down=True)


def _run_per_shard(plan: Plan, server: DagsterServer, instance: DagsterInstance, runs: InstanceRuns | InProcessRuns,
                   shards: list[str], keys: set[AssetKey], report: RunReport, log: Callable[[str], None]) -> None:
    """Run the per-shard work Dagster reports, batch by batch; a failed batch again shard by shard."""
    def failed(run_id: str, outcome: RunOutcome, batch: list[str]) -> None:  # the others go on; raised at the end
        report.failures.append(f"run {run_id} for {_shards(batch)} failed:\n" + _failures(outcome))
        log(report.failures[-1])

    order = instance.get_dynamic_partitions(shard_partitions.name)
    for batch, todo in shard_batches(order, plan.stale_work(server, shards, keys), plan.shards_per_run):
        log(f"{_shards(batch)}: materializing {len(todo)} asset(s)")
        run_id, outcome = runs.run(PER_SHARD_JOB, todo, partition_tags(batch))
        if outcome.success:
            for shard in batch:
                report.per_shard_runs[shard] = sorted({*report.per_shard_runs.get(shard, []),
                                                       *(k.to_user_string() for k in todo)})
            continue
        retry = plan.stale_work(server, batch, keys) if len(batch) > 1 else {}
        if not retry:  # one shard, or a failure that left no work undone (a check): report it as it is
            failed(run_id, outcome, batch)
            continue
        log(f"run {run_id} for {_shards(batch)} failed; redoing them one by one to find the bad ones")
        for shard, again in retry.items():
            run_id, alone = runs.run(PER_SHARD_JOB, again, partition_tags([shard]))
            if alone.success:
                report.per_shard_runs[shard] = sorted({*report.per_shard_runs.get(shard, []),
                                                       *(k.to_user_string() for k in again)})
            else:
                failed(run_id, alone, [shard])


def _job_waves(defs: Definitions, keys: set[AssetKey]) -> list[tuple[str, set[AssetKey]]]:
    """`keys` as runs of the cross_shard and flyt jobs, in an order that runs every asset after
    its parents among `keys` (one cross_shard run when no FLYT asset is among them)."""
    graph = defs.resolve_asset_graph()
    job_of = {k: FLYT_JOB if graph.get(k).group_name == FLYT_GROUP else CROSS_SHARD_JOB for k in keys}
    remaining, waves = set(keys), []
    while remaining:
        for job in (CROSS_SHARD_JOB, FLYT_JOB):
            ready = {k for k in remaining if job_of[k] == job and
                     all(job_of[a] == job for a in _relatives(defs, {k}, remaining, down=False))}
            if ready:
                waves.append((job, ready))
                remaining -= ready
    return waves


def _run_cross_shard(plan: Plan, server: DagsterServer, instance: DagsterInstance,
                     runs: InstanceRuns | InProcessRuns, keys: set[AssetKey], report: RunReport,
                     log: Callable[[str], None]) -> None:
    """One cross-shard run of `keys`: all of them after per-shard work or a retired shard, else
    what is out of date."""
    todo = keys if report.per_shard_runs or report.removed_shards else plan.cross_shard_work(server, instance, keys)
    if not todo:
        return
    for job, part in _job_waves(plan.defs, todo):
        log(f"{'cross-shard' if job == CROSS_SHARD_JOB else job}: materializing {len(part)} asset(s)")
        run_id, outcome = runs.run(job, part, {})
        if EVALUATION in part and EVALUATION not in outcome.materialized and outcome.blocked and not outcome.crashed:
            # A blocked subset stops everything below it in the run, evaluation included;
            # evaluation measures what exists, so it runs on its own.
            log("evaluation did not run below a blocked subset: materializing it on its own")
            outcome.crashed += runs.run(CROSS_SHARD_JOB, {EVALUATION}, {})[1].crashed
        report.blocked += outcome.blocked
        report.warnings += outcome.warnings
        if outcome.crashed:
            report.failures.append(f"cross-shard run {run_id} failed:\n" + _failures(outcome))
    report.cross_shard_assets = sorted({*report.cross_shard_assets, *(k.to_user_string() for k in todo)})


def run_pipeline(defs: Definitions, instance: DagsterInstance, server: DagsterServer, in_process: bool = False,
                 log: Callable[[str], None] = print, shards: list[str] | None = None,
                 cross_shard: bool = True, flyt: bool = False) -> RunReport:
    """Register the crawl's complete shards, then materialize what Dagster reports out of date.

    `defs` must be the definitions `server`'s code location builds (the same settings).
    `shards` limits the per-shard work to those shards (parallel processes take disjoint
    slices); `cross_shard=False` leaves the cross-shard assets, and the per-shard ones below
    them, to a later call; `flyt` adds FLYT's assets (the flyt group: it trains a model).
    """
    started = time.time()
    crawl, lake = defs.resources["crawl"], defs.resources["lake"]
    complete, unsafe = split_shard_names(crawl.shards())
    if unsafe:  # a crawl file named e.g. "...tar" would make the shard "..": never a partition or a path
        log(f"skipping crawl shards with unsafe names: {unsafe[:10]}")
    if not complete:
        raise ValueError(f"no complete shards (tar + parquet + _stats.json) in {crawl.root}")
    unknown = sorted(set(shards or []) - set(complete))
    if unknown:
        raise ValueError(f"not complete shards of {crawl.root}: {unknown[:10]}")
    shards = [s for s in complete if shards is None or s in shards]
    report = RunReport(shards=shards, orphaned_runs=fail_orphaned_runs(instance) if in_process else [])
    for run_id in report.orphaned_runs:
        log(f"run {run_id} of a killed process marked failed")
    register_shards(instance, shards)
    if len(shards) == len(complete):  # a run over the whole crawl (not a slice) notices deleted shards
        report.removed_shards = remove_deleted_shards(instance, crawl, lake, set(complete))
        for shard in report.removed_shards:
            log(f"shard {shard} is no longer in the crawl: its partition is removed and its lake files moved "
                "to retired/ (clipsieve gc deletes them)")
    runs = InProcessRuns(defs, instance) if in_process else InstanceRuns(server, instance, log)
    # Dagster's view of the crawl: each registered shard's files observed (crawl_shard's data
    # versions), so its staleness, the UI's and the automation conditions' see what changed.
    run_id, observed = runs.run(OBSERVE_CRAWL_JOB, None, {})
    if not observed.success:
        report.failures.append(f"run {run_id} observing the crawl failed:\n{_failures(observed)}")
        raise PipelineFailed(report)
    plan = Plan.of(defs, crawl, flyt)
    for stage in plan.stages:
        if stage <= plan.per_shard:
            _run_per_shard(plan, server, instance, runs, shards, stage, report, log)
        elif not cross_shard:
            break  # per-shard assets below a cross-shard one wait for the run that does it
        else:
            _run_cross_shard(plan, server, instance, runs, stage, report, log)
    if report.cross_shard_assets:
        resources = defs.resources
        _, left_out = pool_shards(resources["lake"], resources["clip"].model_id,
                                  instance.get_dynamic_partitions(shard_partitions.name))
        report.warnings += [f"shard {shard} left out of the cross-shard assets: {lacks}"
                            for shard, lacks in left_out.items()]
    report.seconds = time.time() - started
    if report.failures:
        raise PipelineFailed(report)
    return report
