"""The refresh schedule, and the declarative-automation conditions the assets carry.

Two ways to keep a growing crawl curated, both visible in the UI and off until turned on:
  * the `crawl_sensor` (orchestration/sensors.py) runs new and rewritten shards, and the
    `refresh_schedule` reruns the cross-shard job (dedup, subsets, indices, audits) on a
    cron ($CLIPSIEVE_REFRESH_CRON, default hourly);
  * declarative automation: per-shard assets below `samples` follow it eagerly (a shard
    materialized from the UI gets its embeddings and scores), and cross-shard assets refresh
    on the same cron once their upstream has been updated since the last tick. It runs when
    the "default_automation_condition_sensor" is switched on in the UI's Automation tab.
"""

import os

from dagster import AutomationCondition, DefaultScheduleStatus, JobDefinition, ScheduleDefinition

REFRESH_CRON = os.environ.get("CLIPSIEVE_REFRESH_CRON", "0 * * * *")

PER_SHARD_AUTOMATION = AutomationCondition.eager()
CROSS_SHARD_AUTOMATION = AutomationCondition.on_cron(REFRESH_CRON)


def build_refresh_schedule(job: JobDefinition) -> ScheduleDefinition:
    return ScheduleDefinition(
        name="refresh_schedule",
        job=job,
        cron_schedule=REFRESH_CRON,
        default_status=DefaultScheduleStatus.STOPPED,
        description=f"Reruns the cross-shard assets on '{REFRESH_CRON}' ($CLIPSIEVE_REFRESH_CRON).",
    )
