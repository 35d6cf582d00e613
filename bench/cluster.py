"""The sample crawl on a local cluster against one process: what remote execution costs a step.

Starts what tests/test_cluster.py starts (an S3 server on loopback, PostgreSQL, a Ray head
and worker nodes), writes a sample crawl into the S3 server, and materializes it twice:
in one process (`--in-process`, a local lake, a SQLite instance) and on the cluster (runs
launched through the instance and a dagster-daemon, every step a Ray job, the lake in S3).
Prints, per step (summed over the runs that had it): its seconds in one process, its
seconds on the cluster, and the cluster's overhead before it: from its launch
(STEP_WORKER_STARTING) to its start in the Ray job's process (STEP_START), which is the
job's scheduling and the process's imports and code location load.

    .venv/bin/python bench/cluster.py --shards 4 --samples-per-shard 250
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dagster import DagsterEventType, DagsterInstance  # noqa: E402

from assets.demo.sample_crawl import write_sample_crawl  # noqa: E402
from tests.postgres_server import postgres_server  # noqa: E402
from tests.ray_cluster import ray_cluster  # noqa: E402
from tests.s3_server import bucket_filesystem, s3_server  # noqa: E402

CLI = [sys.executable, "-m", "orchestration.cli"]
KINDS = {DagsterEventType.STEP_WORKER_STARTING: "launched", DagsterEventType.STEP_START: "started",
         DagsterEventType.STEP_SUCCESS: "done"}


def step_times(instance: DagsterInstance) -> dict[str, dict[str, float]]:
    """Step key -> {"seconds": summed start-to-success, "overhead": summed launch-to-start}."""
    totals: dict[str, dict[str, float]] = defaultdict(lambda: {"seconds": 0.0, "overhead": 0.0})
    for run in instance.get_runs():
        seen: dict[tuple[str, str], float] = {}
        for entry in instance.all_logs(run.run_id):
            event = entry.dagster_event
            if event is not None and event.event_type in KINDS and event.step_key:
                seen[(event.step_key, KINDS[event.event_type])] = entry.timestamp
        for (step, kind), when in seen.items():
            if kind == "done" and (step, "started") in seen:
                totals[step]["seconds"] += when - seen[(step, "started")]
            if kind == "started" and (step, "launched") in seen:
                totals[step]["overhead"] += when - seen[(step, "launched")]
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--samples-per-shard", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2, help="Ray worker nodes (one CPU and one logical GPU each)")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="clipsieve-cluster-bench-"))
    crawl = folder / "crawl"
    write_sample_crawl(crawl, args.shards, args.samples_per_shard, seed=5)
    (folder / "checks.toml").write_text("[default]\n")  # a small crawl's duplicate share would block
    settings = {"CLIPSIEVE_CHECKS": str(folder / "checks.toml")}
    try:
        with s3_server() as s3, postgres_server() as pg:
            store = bucket_filesystem(s3)
            store.put(str(crawl), f"{s3['bucket']}/crawl", recursive=True)
            remote_crawl, remote_lake = f"s3://{s3['bucket']}/crawl", f"s3://{s3['bucket']}/lake"

            local_home = folder / "local_home"
            env = {**os.environ, **settings, **s3["env"], "DAGSTER_HOME": str(local_home)}
            started = time.perf_counter()
            subprocess.run([*CLI, "materialize", "--crawl", remote_crawl, "--lake", str(folder / "lake"),
                            "--in-process"], cwd=REPO, env=env, check=True, capture_output=True)
            local_seconds = time.perf_counter() - started

            home = folder / "home"
            home.mkdir()
            shutil.copy(REPO / "deploy" / "dagster-postgres.yaml", home / "dagster.yaml")
            pg_env = {"DAGSTER_PG_HOST": pg["host"], "DAGSTER_PG_PORT": str(pg["port"]),
                      "DAGSTER_PG_USER": pg["user"], "DAGSTER_PG_PASSWORD": "", "DAGSTER_PG_DB": pg["db"]}
            with ray_cluster({**s3["env"], **pg_env}, workers=args.workers) as cluster:
                env = {**os.environ, **settings, **s3["env"], **pg_env, "DAGSTER_HOME": str(home),
                       "CLIPSIEVE_EXECUTOR": "ray", "CLIPSIEVE_RAY_ADDRESS": cluster["address"],
                       "CLIPSIEVE_EMBEDDING_GPUS": "1", "CLIPSIEVE_CRAWL": remote_crawl, "CLIPSIEVE_LAKE": remote_lake}
                daemon = subprocess.Popen([str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w",
                                           str(REPO / "workspace.yaml")], cwd=REPO, env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    started = time.perf_counter()
                    subprocess.run([*CLI, "materialize", "--crawl", remote_crawl, "--lake", remote_lake], cwd=REPO,
                                   env=env, check=True, capture_output=True)
                    cluster_seconds = time.perf_counter() - started
                finally:
                    daemon.terminate()
                    daemon.wait(timeout=60)
            os.environ.update(pg_env)  # the instance's config names its database through these
            with DagsterInstance.from_config(str(local_home)) as instance:
                local = step_times(instance)
            with DagsterInstance.from_config(str(home)) as instance:
                remote = step_times(instance)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    print(f"{args.shards} shards x {args.samples_per_shard} samples; {args.workers} Ray worker nodes")
    print(f"{'step':<34}{'one process s':>15}{'cluster s':>11}{'overhead s':>12}")
    for step in sorted(remote, key=lambda s: -remote[s]["overhead"]):
        print(f"{step:<34}{local.get(step, {}).get('seconds', 0.0):>15.2f}{remote[step]['seconds']:>11.2f}"
              f"{remote[step]['overhead']:>12.2f}")
    steps = len(remote)
    overhead = sum(t["overhead"] for t in remote.values())
    print(f"\nmaterialize: {local_seconds:.1f} s in one process, {cluster_seconds:.1f} s on the cluster; "
          f"{steps} steps, overhead {overhead:.1f} s in all ({overhead / max(steps, 1):.1f} s a step)")


if __name__ == "__main__":
    main()
