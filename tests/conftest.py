"""Shared fixtures: a small sample crawl, and a lake materialized from it through the CLI."""

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from dagster import DagsterInstance, Definitions

from assets.demo.sample_crawl import write_sample_crawl
from orchestration.dagster_server import DagsterServer
from orchestration.definitions import build_definitions, location_env
from orchestration.instance import write_default_config
from orchestration.runner import RunReport, run_pipeline

REPO = Path(__file__).resolve().parents[1]
CLIPSIEVE = [sys.executable, "-m", "orchestration.cli"]
# The sample crawl as `make demo` writes it: the curation targets are asserted on it.
SHARDS, SAMPLES_PER_SHARD, SEED = 8, 250, 0


# The files that take longest (a Ray cluster; killed and repeated runs; real-size crawls): with
# `make test`'s two processes they start first, one each, instead of ending the run alone.
LONGEST_FIRST = ("test_cluster.py", "test_killed_and_parallel_runs.py", "test_real_crawl.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def run_cli(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*CLIPSIEVE, *args], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"clipsieve {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@dataclass
class Pipeline:
    """What `clipsieve materialize --in-process` sets up: an instance, a Dagster webserver
    over it (Dagster's staleness) and the same definitions in this process."""

    instance: DagsterInstance
    defs: Definitions
    server: DagsterServer

    def run(self, **options) -> RunReport:
        return run_pipeline(self.defs, self.instance, self.server, in_process=True, log=lambda _: None, **options)


@contextmanager
def pipeline(home: Path, **settings) -> Iterator[Pipeline]:
    """A Pipeline over the instance folder `home` for `build_definitions(**settings)`."""
    home.mkdir(parents=True, exist_ok=True)
    write_default_config(str(home))
    instance = DagsterInstance.from_config(str(home))
    try:
        with DagsterServer(str(home), location_env(**settings), log=lambda _: None) as server:
            yield Pipeline(instance, build_definitions(**settings), server)
    finally:
        instance.dispose()


@pytest.fixture(scope="session")
def crawl(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("crawl")
    write_sample_crawl(out, SHARDS, SAMPLES_PER_SHARD, SEED)
    return out


@pytest.fixture(scope="session")
def materialized(tmp_path_factory, crawl) -> dict:
    """`clipsieve materialize` over the small crawl, with the runs in a DAGSTER_HOME of its own."""
    lake = tmp_path_factory.mktemp("lake")
    home = tmp_path_factory.mktemp("dagster_home")
    env = {"DAGSTER_HOME": str(home)}
    first = run_cli("materialize", "--crawl", str(crawl), "--lake", str(lake), env=env)
    return {"crawl": crawl, "lake": lake, "home": home, "env": env, "output": first.stdout}


@pytest.fixture(scope="session")
def lake(materialized):
    from resources.lake import LakeResource

    return LakeResource(root=str(materialized["lake"]))


@pytest.fixture(scope="session")
def truth(materialized) -> dict:
    import pyarrow.parquet as pq

    return {r["key"]: r for r in pq.read_table(materialized["crawl"] / "ground_truth.parquet").to_pylist()}


@pytest.fixture(scope="session")
def catalog(lake):
    """A DuckDB catalog over the materialized lake, for the demo model."""
    from resources.catalog import open_catalog
    from resources.clip_model import DEMO_CHECKPOINT, DEMO_MODEL, model_id

    db = open_catalog(lake.url, model_id(DEMO_MODEL, DEMO_CHECKPOINT))
    yield db
    db.close()


@pytest.fixture(scope="session")
def vit_b_32_checkpoint(tmp_path_factory) -> str:
    """A ViT-B-32 with seeded random weights saved as a checkpoint (fp16 safetensors), as
    bench/embed.py saves one: the real-model path without downloading weights."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("vit_b_32") / "vit-b-32-random.safetensors"
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32")
    save_file({k: v.detach().half().contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


@pytest.fixture(scope="session")
def served(materialized, tmp_path_factory) -> Iterator[dict]:
    """`clipsieve serve` over the materialized lake and its crawl, with a copy of the policy
    folder (where its page saves policies): {"url", "policies"}."""
    import shutil

    from assets.subsets import POLICY_DIR
    from tests.serve_server import serve_process

    policies = tmp_path_factory.mktemp("served-policies")
    for path in POLICY_DIR.iterdir():
        shutil.copy(path, policies / path.name)
    with serve_process(materialized["lake"], materialized["crawl"], policies,
                       tmp_path_factory.mktemp("serve-cache")) as url:
        yield {"url": url, "policies": policies}


@pytest.fixture(scope="session")
def s3() -> Iterator[dict]:
    """An S3 server on loopback (moto's server mode) with one bucket: tests/s3_server.py."""
    from tests.s3_server import s3_server

    with s3_server() as server:
        yield server
