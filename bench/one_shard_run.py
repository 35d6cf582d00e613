"""One shard's per-shard assets, the way the UI runs them against the way the CLI does.

    .venv/bin/python bench/one_shard_run.py --samples-per-shard 250 --workdir /tmp/one-shard

1. writes a one-shard sample crawl;
2. runs the `per_shard` job for that shard as a UI launch does (`dagster job execute`: a run
   with the job's own executor) in a fresh instance, and prints its wall time;
3. runs `clipsieve materialize --no-cross-shard` on the same crawl in another fresh
   instance (its webserver, registration and the crawl observation included), launching
   the run through the instance and then with --in-process, and prints their wall times.
Figures are printed, never asserted.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def timed(command: list[str], env: dict, log: Path) -> float:
    started = time.perf_counter()
    with log.open("w") as out:
        subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - started


def fresh_home(path: Path) -> Path:
    from orchestration.instance import write_default_config

    path.mkdir(parents=True)
    write_default_config(str(path))  # as `clipsieve materialize` writes a new home's
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples-per-shard", type=int, default=250)
    parser.add_argument("--workdir", default="/tmp/clipsieve-one-shard")
    args = parser.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    crawl = work / "crawl"
    subprocess.run([str(BIN / "clipsieve"), "sample-crawl", str(crawl), "--shards", "1",
                    "--samples-per-shard", str(args.samples_per_shard), "--seed", "3"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)

    home = fresh_home(work / "job_home")
    env = {**os.environ, "DAGSTER_HOME": str(home), "CLIPSIEVE_CRAWL": str(crawl),
           "CLIPSIEVE_LAKE": str(work / "job_lake")}
    subprocess.run([sys.executable, "-c", "from dagster import DagsterInstance; "
                    "DagsterInstance.get().add_dynamic_partitions('shards', ['00000'])"], cwd=ROOT, env=env, check=True)
    job = timed([str(BIN / "dagster"), "job", "execute", "-m", "orchestration.definitions", "-a", "defs",
                 "-j", "per_shard", "--tags", json.dumps({"dagster/partition": "00000"})], env, work / "job.log")

    cli = {}
    for mode, options in (("launched", []), ("in_process", ["--in-process"])):
        cli_env = {**os.environ, "DAGSTER_HOME": str(fresh_home(work / f"cli_home_{mode}"))}
        command = [str(BIN / "clipsieve"), "materialize", "--crawl", str(crawl), "--lake",
                   str(work / f"cli_lake_{mode}"), "--no-cross-shard", *options]
        cli[mode] = timed(command, cli_env, work / f"cli_{mode}.log")
    print(f"one shard of {args.samples_per_shard} samples, per-shard assets only")
    print(f"  per_shard job run (as launched from the UI):    {job:.1f} s")
    print(f"  clipsieve materialize --no-cross-shard:          {cli['launched']:.1f} s")
    print(f"  clipsieve materialize --no-cross-shard --in-process: {cli['in_process']:.1f} s")


if __name__ == "__main__":
    main()
