"""The refresh schedule, and the declarative-automation conditions the assets carry.

One change detector, Dagster's: the crawl sensor (orchestration/sensors.py) registers new
shards and requests an observation of `crawl_shard` whenever the crawl's listing changes;
each shard's observed data version (its files' fingerprint) is what makes its assets
stale. Declarative automation then does the rest, with the same conditions for every way
in:
  * per-shard assets: eagerly, when a shard is new, its crawl files changed (a new data
    version of crawl_shard), a parent was updated, or the asset's code version changed;
  * cross-shard assets (dedup, subsets, indices, audits) on a cron (the definitions'
    refresh_cron, $CLIPSIEVE_REFRESH_CRON, default hourly) once their upstream has been
    updated since the last tick, or when their code version changed (a policy's SQL), and
    only while every blocking check of their parents passed (an index never follows a
    subset its check blocked).
Automation runs when the "default_automation_condition_sensor" is on (the UI's Automation
tab); the `refresh_schedule` reruns the cross-shard job on the same cron instead, for
deployments without it. Both are off until turned on.
"""

from dagster import AutomationCondition, DefaultScheduleStatus, JobDefinition, ScheduleDefinition

DEFAULT_REFRESH_CRON = "0 * * * *"

# eager(), with a code version change as one more reason to run.
PER_SHARD_AUTOMATION = (
    (AutomationCondition.newly_missing() | AutomationCondition.any_deps_updated()
     | AutomationCondition.code_version_changed()).since_last_handled()
    & ~AutomationCondition.any_deps_missing()
    & ~AutomationCondition.any_deps_in_progress()
    & ~AutomationCondition.in_progress()
).with_label("eager, or a new code version")


def cross_shard_automation(cron: str) -> AutomationCondition:
    return (
        (AutomationCondition.on_cron(cron) | AutomationCondition.code_version_changed().since_last_handled())
        & ~AutomationCondition.any_deps_in_progress()
        & AutomationCondition.all_deps_blocking_checks_passed()
    ).with_label("on the refresh cron or a new code version, blocking checks passed")


def build_refresh_schedule(job: JobDefinition, cron: str) -> ScheduleDefinition:
    return ScheduleDefinition(
        name="refresh_schedule",
        job=job,
        cron_schedule=cron,
        default_status=DefaultScheduleStatus.STOPPED,
        description=f"Reruns the cross-shard assets on '{cron}' ($CLIPSIEVE_REFRESH_CRON).",
    )
