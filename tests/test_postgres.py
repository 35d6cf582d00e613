"""The shipped Postgres instance config (deploy/dagster-postgres.yaml) runs the pipeline.

Needs PostgreSQL's server binaries (`.ci/run` installs Debian's `postgresql` when missing);
without them the test is skipped and says so.
"""

import shutil
from pathlib import Path

import psycopg2
import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus

from assets.demo.sample_crawl import write_sample_crawl
from orchestration.dagster_server import DagsterServer
from orchestration.definitions import build_definitions, location_env
from orchestration.runner import run_pipeline
from tests.postgres_server import postgres_bin_dir, postgres_server

DEPLOY_CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "dagster-postgres.yaml"


@pytest.mark.skipif(postgres_bin_dir() is None, reason="PostgreSQL server binaries (initdb) not installed")
def test_pipeline_on_postgres_instance(tmp_path, monkeypatch):
    (tmp_path / "checks.toml").write_text("[default]\n")  # a tiny crawl's duplicate share would block
    crawl = tmp_path / "crawl"
    write_sample_crawl(crawl, shards=2, samples_per_shard=40, seed=3)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY_CONFIG, home / "dagster.yaml")

    with postgres_server() as pg:
        for name, value in {"HOST": pg["host"], "PORT": str(pg["port"]), "USER": pg["user"],
                            "PASSWORD": "", "DB": pg["db"]}.items():
            monkeypatch.setenv(f"DAGSTER_PG_{name}", value)
        settings = {"crawl": crawl, "lake": tmp_path / "lake", "checks": tmp_path / "checks.toml"}
        with (DagsterInstance.from_config(str(home)) as instance,
              DagsterServer(str(home), location_env(**settings), log=lambda _: None) as server):
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            definitions = build_definitions(**settings)
            first = run_pipeline(definitions, instance, server, in_process=True, log=lambda _: None)
            assert set(first.per_shard_runs) == {"00000", "00001"}
            runs = instance.get_runs()
            assert runs and all(r.status == DagsterRunStatus.SUCCESS for r in runs)
            assert set(instance.get_materialized_partitions(AssetKey("embeddings"))) == {"00000", "00001"}
            # The skip decision reads materializations back from Postgres.
            again = run_pipeline(definitions, instance, server, in_process=True, log=lambda _: None)
            assert again.per_shard_runs == {} and again.cross_shard_assets == []
            runs = instance.get_runs()  # the second one observed the crawl again

        # The history is in the database itself, not in files under DAGSTER_HOME.
        with psycopg2.connect(host=pg["host"], port=pg["port"], user=pg["user"], dbname=pg["db"]) as connection:
            cursor = connection.cursor()
            cursor.execute("SELECT count(*) FROM runs")
            assert cursor.fetchone()[0] == len(runs)
    assert not list(home.glob("**/*.db"))
