"""The pipeline on a cluster, every server real and started here: a Ray head and two worker
nodes (tests/ray_cluster.py), the crawl and the lake in an S3 server on loopback
(tests/s3_server.py), the instance on PostgreSQL (deploy/dagster-postgres.yaml). Runs are
launched through the instance as from the UI, and every step is a Ray job placed by its op
tag: the embeddings step on a node's GPU. The nodes share nothing but the object store and
the database (and the code and its configuration: the policy files are read from this
machine's disk, as a deployment's image holds them), and the lake they make equals a
local, in-process run's, file for file.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance

from assets.demo.sample_crawl import write_sample_crawl
from assets.evaluation import EVALUATION_PATH
from tests.conftest import REPO, run_cli
from tests.lake_files import compare_outputs
from tests.postgres_server import postgres_bin_dir, postgres_server
from tests.s3_server import bucket_filesystem

ray_job_submission = pytest.importorskip("ray.job_submission", reason="ray is the `cluster` extra")
from ray.util.state import list_actors  # noqa: E402

DEPLOY_CONFIG = REPO / "deploy" / "dagster-postgres.yaml"
SHARDS, SAMPLES_PER_SHARD, SEED = 2, 40, 5
POLICIES = ("laion400m", "safe")


@pytest.mark.skipif(postgres_bin_dir() is None, reason="PostgreSQL server binaries (initdb) not installed")
def test_the_sample_crawl_on_a_ray_cluster_with_s3_and_postgres_equals_a_local_run(tmp_path, s3, monkeypatch):
    from tests.ray_cluster import ray_cluster

    crawl = tmp_path / "crawl"
    write_sample_crawl(crawl, SHARDS, SAMPLES_PER_SHARD, SEED)
    store = bucket_filesystem(s3)
    store.put(str(crawl), f"{s3['bucket']}/crawl", recursive=True)
    remote_crawl, remote_lake = f"s3://{s3['bucket']}/crawl", f"s3://{s3['bucket']}/lake"
    (tmp_path / "checks.toml").write_text("[default]\n")  # a tiny crawl's duplicate share would block
    (tmp_path / "policies").mkdir()
    for policy in POLICIES:  # two policies keep the cross-shard stage short
        shutil.copy(REPO / "sql" / "policies" / f"{policy}.sql", tmp_path / "policies")
    settings = {"CLIPSIEVE_CHECKS": str(tmp_path / "checks.toml"), "CLIPSIEVE_POLICY_DIR": str(tmp_path / "policies")}

    # The reference: one process, a SQLite instance, a local lake (the crawl it records is the same URL).
    local = tmp_path / "local"
    run_cli("materialize", "--crawl", remote_crawl, "--lake", str(local), "--in-process",
            env={**settings, **s3["env"], "DAGSTER_HOME": str(tmp_path / "local_home")})
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(DEPLOY_CONFIG, home / "dagster.yaml")

    with postgres_server() as pg:
        pg_env = {"DAGSTER_PG_HOST": pg["host"], "DAGSTER_PG_PORT": str(pg["port"]), "DAGSTER_PG_USER": pg["user"],
                  "DAGSTER_PG_PASSWORD": "", "DAGSTER_PG_DB": pg["db"]}
        # What each node brings itself: object-store and database credentials.
        with ray_cluster({**s3["env"], **pg_env}) as cluster:
            env = {**settings, **s3["env"], **pg_env, "DAGSTER_HOME": str(home), "CLIPSIEVE_EXECUTOR": "ray",
                   "CLIPSIEVE_RAY_ADDRESS": cluster["address"], "CLIPSIEVE_EMBEDDING_GPUS": "1",
                   "CLIPSIEVE_CRAWL": remote_crawl, "CLIPSIEVE_LAKE": remote_lake}
            # The deployment's daemon: it takes runs off the instance's queue and launches them.
            daemon_log = (tmp_path / "daemon.log").open("w")
            daemon = subprocess.Popen([str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w",
                                       str(REPO / "workspace.yaml")], cwd=REPO, env={**os.environ, **env},
                                      stdout=daemon_log, stderr=subprocess.STDOUT)
            try:
                result = run_cli("materialize", "--crawl", remote_crawl, "--lake", remote_lake, env=env)
            finally:
                daemon.terminate()
                daemon.wait(timeout=60)
                daemon_log.close()
            assert "cross-shard: materializing" in result.stdout, result.stdout

            jobs = ray_job_submission.JobSubmissionClient(cluster["address"]).list_jobs()
            steps = {job.submission_id: job for job in jobs if (job.metadata or {}).get("dagster/op")}
            assert steps and {job.status for job in steps.values()} == {ray_job_submission.JobStatus.SUCCEEDED}
            # Each step's request is its job supervisor's: the actor Ray placed with those resources.
            supervisors = {actor.name: actor.required_resources
                           for actor in list_actors(address=cluster["address"], detail=True, limit=10_000,
                                                    filters=[("class_name", "=", "JobSupervisor")])}
            wanted = {steps[s].metadata["dagster/op"]: supervisors[f"_ray_internal_job_actor_{s}"] for s in steps}
            assert wanted["embeddings"] == {"CPU": 1.0, "GPU": 1.0}, wanted
            assert all(resources == {"CPU": 1.0} for op, resources in wanted.items() if op != "embeddings"), wanted
            assert {"scores__clip_similarity", "near_duplicates", "safe_subset", "safe_index"} <= set(wanted), wanted
            assert len({job.driver_node_id for job in steps.values()}) == 2  # both workers ran steps

        for name, value in pg_env.items():
            monkeypatch.setenv(name, value)  # the instance's config names its database through these
        with DagsterInstance.from_config(str(home)) as instance:  # Postgres: the history outlives the cluster
            gpus = [record.asset_materialization.metadata["cuda_visible_devices"].value
                    for record in instance.fetch_materializations(AssetKey("embeddings"), limit=10).records]
            assert gpus == ["0"] * SHARDS  # each shard's embeddings step ran with the GPU Ray gave it

    for name, value in s3["env"].items():
        monkeypatch.setenv(name, value)  # lake_files reads the S3 lake through AWS's variables
    kinds = compare_outputs(local, remote_lake)
    assert any(name.endswith("members.parquet") for name in kinds["bytes"])
    assert EVALUATION_PATH in kinds["bytes"]  # the crawl's ground truth, read from S3
