"""Where a run's steps execute ($CLIPSIEVE_EXECUTOR).

`in_process` (the default): every step in the run's own process. Steps on a crawl of
thousands of samples take seconds; a process per step would spend more on imports and
model loading than on the work.

`ray`: every step is a Ray job on the cluster whose job server is at $CLIPSIEVE_RAY_ADDRESS
(the head's dashboard, e.g. http://head:8265), through Dagster's Ray integration
(dagster-ray's `ray_executor`). Ray places each step by the CPUs and GPUs its op tag asks
for (assets/definitions/step_resources.py): the embeddings step one GPU when
$CLIPSIEVE_EMBEDDING_GPUS is 1, every other step one CPU. The steps of a run share nothing
but the lake and the instance, so on a cluster the lake is an object-store URL every node
reaches (resources/object_store.py) and the instance a database (deploy/). Each node brings
its own credentials (its environment or role: AWS_*, DAGSTER_PG_*); what the run passes on
to each step is the code location's settings, so the step loads the same definitions.
"""

import os

from dagster import ExecutorDefinition, in_process_executor

from resources.curation_files import DEFAULTS as CURATION_FILE_VARIABLES

EXECUTORS = ("in_process", "ray")
# The code location's settings: a step's process must load the same definitions as the run.
LOCATION_VARIABLES = (
    "CLIPSIEVE_CRAWL", "CLIPSIEVE_LAKE", "CLIPSIEVE_MODEL", "CLIPSIEVE_PRETRAINED", "CLIPSIEVE_PRECISION",
    "CLIPSIEVE_REFRESH_CRON", "CLIPSIEVE_SHARDS_PER_RUN", "CLIPSIEVE_EXECUTOR", "CLIPSIEVE_RAY_ADDRESS",
    "CLIPSIEVE_EMBEDDING_GPUS", "CLIPSIEVE_NSFW_HEAD", "CLIPSIEVE_WATERMARK_HEAD", "CLIPSIEVE_AESTHETIC_HEAD",
    "CLIPSIEVE_TEXT_IN_IMAGE_HEAD",
    "CLIPSIEVE_FLYT_DOWNSTREAM", "CLIPSIEVE_FLYT_REFERENCE_MODEL", "CLIPSIEVE_FLYT_REFERENCE_CHECKPOINT",
    "CLIPSIEVE_FLYT_STEPS", "CLIPSIEVE_FLYT_MIX_WEIGHTS",
    *(variable for variable, _ in CURATION_FILE_VARIABLES.values()),
)


def step_executor(kind: str, ray_address: str | None = None) -> ExecutorDefinition:
    """The executor of the per-shard and cross-shard jobs for an $CLIPSIEVE_EXECUTOR value."""
    if kind not in EXECUTORS:
        raise ValueError(f"CLIPSIEVE_EXECUTOR must be one of {EXECUTORS}, not {kind!r}")
    if kind == "in_process":
        return in_process_executor
    if not ray_address:
        raise ValueError("CLIPSIEVE_EXECUTOR=ray needs CLIPSIEVE_RAY_ADDRESS: the Ray job server "
                         "(the head's dashboard address, e.g. http://127.0.0.1:8265)")
    from dagster_ray import ray_executor  # only deployments on Ray install it (the `cluster` extra)

    return ray_executor.configured({"ray": {"address": ray_address, "env_vars": list(LOCATION_VARIABLES)}},
                                   name="ray_steps")


def executor_from_env() -> ExecutorDefinition:
    """step_executor for the variables as they are when the code location loads."""
    return step_executor(os.environ.get("CLIPSIEVE_EXECUTOR") or "in_process", os.environ.get("CLIPSIEVE_RAY_ADDRESS"))
