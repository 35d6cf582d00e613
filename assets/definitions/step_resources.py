"""What each step asks of the machine that runs it, as an op tag.

Dagster's Ray executor (dagster-ray; orchestration/execution.py) places each step as a Ray
job with the CPUs and GPUs its `dagster-ray/config` tag asks for, so Ray runs a step only
where they are free: on a node with eight GPUs, eight embedding steps at once, each with
its own device (Ray sets CUDA_VISIBLE_DEVICES). Other executors ignore the tag.
"""

import json

RAY_CONFIG_TAG = "dagster-ray/config"


def step_resources(num_cpus: float = 1, num_gpus: float = 0) -> dict[str, str]:
    """Op tags asking for `num_cpus` CPUs and `num_gpus` GPUs."""
    wanted: dict[str, float] = {"num_cpus": num_cpus}
    if num_gpus:
        wanted["num_gpus"] = num_gpus
    return {RAY_CONFIG_TAG: json.dumps(wanted)}


CPU_STEP = step_resources()  # every step but the embeddings: one CPU
