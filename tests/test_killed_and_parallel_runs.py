"""Killed, repeated and parallel runs: SIGKILL mid-embedding and mid-scoring (on a local lake
and on a lake in an S3 server), byte-identical re-materialization, and four shard runs at
once over one lake and one SQLite instance.

Every run here is a real `clipsieve materialize` process over a small sample
crawl; the outputs are compared file by file against one uninterrupted run, whose runs
were launched through the instance (the killed and parallel ones run in process).
"""

import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from assets.demo.sample_crawl import write_sample_crawl
from tests.conftest import CLIPSIEVE, REPO, run_cli
from tests.lake_files import assert_complete, compare_outputs, temporaries

SHARDS, SAMPLES_PER_SHARD, SEED = 4, 40, 11
POLICIES = ("laion400m", "safe")  # two policies keep the cross-shard stage short
PER_SHARD_STEPS = 11  # samples, embeddings and nine scores
# Steps of each stage a kill may land in: embeddings has one; of the nine scores, the first
# four, so five are left when the kill comes. Score steps over 40 samples take a few tens of
# ms each, so a kill in the last ones could come after the run had finished.
STAGE_STEPS = {"embeddings": 1, "scores": 4}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("runs")
    write_sample_crawl(root / "crawl", SHARDS, SAMPLES_PER_SHARD, SEED)
    # A tiny crawl holds a duplicate share the default checks would (rightly) block.
    (root / "checks.toml").write_text("[default]\n")
    (root / "policies").mkdir()
    for policy in POLICIES:
        shutil.copy(REPO / "sql" / "policies" / f"{policy}.sql", root / "policies")
    return {"root": root, "crawl": root / "crawl", "env": {
        "CLIPSIEVE_CHECKS": str(root / "checks.toml"), "CLIPSIEVE_POLICY_DIR": str(root / "policies")}}


def _materialize(setup: dict, lake: Path | str, home: Path, *options: str,
                 env: dict | None = None) -> subprocess.CompletedProcess:
    return run_cli("materialize", "--crawl", str(setup["crawl"]), "--lake", str(lake), *options,
                   env={**setup["env"], "DAGSTER_HOME": str(home), **(env or {})})


@pytest.fixture(scope="module")
def reference(setup) -> Path:
    """One uninterrupted run: what every other run here must reproduce."""
    lake = setup["root"] / "reference"
    _materialize(setup, lake, setup["root"] / "reference_home")
    return lake


def test_materializing_twice_gives_identical_outputs(setup, reference):
    second = setup["root"] / "second"
    _materialize(setup, second, setup["root"] / "second_home")
    kinds = compare_outputs(reference, second)
    # Parquet, npy, faiss indices, JSON, audits and reports are byte for byte the same; only
    # index_info.json may differ, in its build time.
    assert all(n.endswith("index_info.json") for n in kinds["content"]), kinds["content"]
    assert any(n.endswith(".npy") for n in kinds["bytes"]) and any(n.endswith(".index") for n in kinds["bytes"])
    assert any(n.endswith("report.html") for n in kinds["bytes"])


def _query(db: Path, sql: str, *params) -> list[tuple]:
    """Read the instance's SQLite files beside the running process (read-only; a busy read
    returns nothing and the caller polls again)."""
    if not db.exists():
        return []
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as connection:
            return connection.execute(sql, params).fetchall()
    except sqlite3.OperationalError:
        return []


def run_steps(home: Path, shard: str) -> tuple[list[str], set[str]]:
    """(started, succeeded) step keys of the runs for `shard` (alone or in a batch), from the
    Dagster event log."""
    run_ids = _query(home / "history" / "runs.db",
                     "SELECT run_id FROM run_tags WHERE key = 'clipsieve/shards' "
                     "AND ',' || value || ',' LIKE '%,' || ? || ',%'", shard)
    started, done = [], set()
    for (run_id,) in run_ids:
        for kind, step in _query(home / "history" / "runs" / f"{run_id}.db",
                                 "SELECT dagster_event_type, step_key FROM event_logs "
                                 "WHERE dagster_event_type IN ('STEP_START', 'STEP_SUCCESS') ORDER BY id"):
            (started.append if kind == "STEP_START" else done.add)(step)
    return started, done


def run_statuses(home: Path) -> list[str]:
    """Statuses of the runs that materialize (each materialize also runs an observation of the crawl)."""
    return [s for (s,) in _query(home / "history" / "runs.db",
                                 "SELECT status FROM runs WHERE pipeline_name != 'observe_crawl'")]


# On S3 the embeddings stage only: its files are the largest multipart uploads, and each S3
# case takes three times a local one (the scores stage on S3 added two minutes to the suite).
@pytest.mark.parametrize(("stage", "where"), [("embeddings", "local"), ("scores", "local"), ("embeddings", "s3")])
def test_a_run_killed_mid_stage_leaves_whole_files_and_its_rerun_matches(stage, where, setup, reference, tmp_path,
                                                                         request):
    rng = random.Random(f"kill-{stage}")
    # A seeded random point inside the stage: a few ms after the k-th of its steps starts
    # (never the shard's last step, so the kill cannot land after the shard's run is done;
    # a wall-clock delay could, once the steps got faster).
    shard, k, delay = f"{rng.randrange(SHARDS):05d}", 1 + rng.randrange(STAGE_STEPS[stage]), rng.uniform(0, 0.02)
    home, server_env = tmp_path / "home", {}
    if where == "s3":  # the lake in an S3 server on loopback; the instance and the crawl stay local
        server = request.getfixturevalue("s3")
        server_env = server["env"]
        lake: Path | str = f"s3://{server['bucket']}/kill-{stage}"
        for name, value in server_env.items():
            request.getfixturevalue("monkeypatch").setenv(name, value)  # this process reads the lake too
    else:
        lake = tmp_path / "lake"
    env = {**os.environ, **setup["env"], **server_env, "DAGSTER_HOME": str(home)}
    # In process: the killed command is the run's worker (a launched run would outlive it).
    command = [*CLIPSIEVE, "materialize", "--crawl", str(setup["crawl"]), "--lake", str(lake), "--in-process"]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Never a partial file under a final name, even mid-run: checked over and over beside
    # the run (a listing of the S3 server takes longer than a score step).
    stop, failures = threading.Event(), []
    # Each S3 listing costs the server the CPU the run needs: ten a second there.
    interval = 0.2 if where == "s3" else 0.02

    def check_while_running() -> None:
        while not stop.is_set():
            try:
                assert_complete(lake)
            except Exception as error:  # re-raised below, in the test's thread
                failures.append(error)
                return
            time.sleep(interval)

    checker = threading.Thread(target=check_while_running)
    checker.start()
    try:
        deadline = time.time() + 120
        # Watch the run's own progress: its steps in the event log, then a seeded delay.
        while sum(s.startswith(stage) for s in run_steps(home, shard)[0]) < k:
            assert process.poll() is None and time.time() < deadline, "the run ended before the stage began"
            time.sleep(0.02)
        time.sleep(delay)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        stop.set()
        checker.join()
    if failures:
        raise failures[0]
    started, done = run_steps(home, shard)
    assert len(done) < PER_SHARD_STEPS, f"shard {shard}'s run had finished: {started}"
    print(f"killed {delay:.3f} s after step {k} of {stage} started, shard {shard}: {len(done)} steps done")
    assert "STARTED" in run_statuses(home)  # what a SIGKILL leaves in the instance
    assert_complete(lake)

    rerun = _materialize(setup, lake, home, "--in-process", env=server_env)  # the same command again
    assert "of a killed process marked failed" in rerun.stdout
    assert "STARTED" not in run_statuses(home)
    assert re.search(r"^shards? \S+.*: materializing", rerun.stdout, re.M), rerun.stdout  # the per-shard work again
    assert_complete(lake)
    assert temporaries(lake) == []  # the killed writer's temporaries went with the rewrite
    compare_outputs(reference, lake)


def test_four_shard_runs_at_once_share_a_lake_and_an_instance(setup, reference, tmp_path):
    lake, home = tmp_path / "lake", tmp_path / "home"  # no DAGSTER_HOME yet: the four runs create it together
    env = {**os.environ, **setup["env"], "DAGSTER_HOME": str(home)}
    # Each process runs one shard's per-shard assets; the cross-shard ones follow in one later run.
    processes = [subprocess.Popen([*CLIPSIEVE, "materialize", "--crawl", str(setup["crawl"]), "--lake", str(lake),
                                   "--shards", f"{shard:05d}", "--no-cross-shard", "--in-process"],
                                  cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for shard in range(SHARDS)]
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (_, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]
        assert "database is locked" not in err and "Traceback" not in err, err[-3000:]
    assert run_statuses(home).count("SUCCESS") == SHARDS

    # Every shard's per-shard work is done: what is left is the cross-shard runs and, between
    # them, each shard's near-duplicate assignment (it needs the pool's centroids).
    final = _materialize(setup, lake, home)
    assert re.findall(r"^shards? .*: materializing (\d+) asset", final.stdout, re.M) == ["1"], final.stdout
    assert "cross-shard: materializing" in final.stdout, final.stdout
    assert temporaries(lake) == []
    compare_outputs(reference, lake)


def test_the_next_write_removes_only_a_dead_writers_temporaries(tmp_path):
    from resources.lake import LakeResource
    from resources.processes import this_process

    host, pid = this_process()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = tmp_path / "shards" / "00000"
    folder.mkdir(parents=True)
    leftovers = {"dead": f"samples.parquet.tmp-{host}-{dead.pid}-000000000000",
                 "live": f"samples.parquet.tmp-{host}-{pid}-000000000000",  # a writer still running
                 "foreign": f"samples.parquet.tmp-other-host-{dead.pid}-000000000000",  # cannot be judged
                 "other_file": f"keys.parquet.tmp-{host}-{dead.pid}-000000000000"}  # not this write's
    for name in leftovers.values():
        (folder / name).write_bytes(b"PAR1 half")
    LakeResource(root=str(tmp_path)).write_bytes("shards/00000/samples.parquet", b"whole")
    remaining = {p.name for p in folder.iterdir()}
    assert remaining == {"samples.parquet", leftovers["live"], leftovers["foreign"], leftovers["other_file"]}
    assert (folder / "samples.parquet").read_bytes() == b"whole"
