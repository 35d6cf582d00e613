"""Wall time per stage of the whole pipeline on N shards, and the CLIP forward's share of it.

    .venv/bin/python bench/pipeline.py                          # sample crawl 8 x 250, demo model
    .venv/bin/python bench/pipeline.py --model vit-b-32         # the same crawl, ViT-B-32 (random weights)
    .venv/bin/python bench/pipeline.py --shards 4 --samples-per-shard 500 --image-size 256
    .venv/bin/python bench/pipeline.py --model vit-b-32 --marginal  # and on 16 shards: per-sample shares
    .venv/bin/python bench/pipeline.py --model vit-b-32 --repeat 3  # three runs, the median one in detail

Runs `clipsieve materialize` in a fresh process on a fresh lake and Dagster instance, then
reads the instance's event log: each step's duration (STEP_START to STEP_SUCCESS), summed
over runs per asset, plus what no step accounts for: before the first run (interpreter,
imports, definitions, the instance), Dagster's own time in and between runs, and the exit.
The CLIP forward is the embeddings asset's `forward_seconds` metadata (the model calls
alone); "everything else" is the total minus that. The fixed costs (before the first run,
after the last, and the embeddings' `model_load_seconds`) are paid whatever the crawl's
size: the bench prints the share they alone would take. For ViT-B-32 the NSFW, watermark
and aesthetic scores come from zero-shot heads (no head file fits 512-d embeddings), as on
a user's first run, and the bench turns the blocking checks off so every stage runs
whatever the subsets hold. Figures are printed, never asserted.
"""

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.embed import checkpoint  # noqa: E402  (after the path setup above)
from orchestration.instance import write_default_config  # noqa: E402


def _number(metadata: dict, name: str) -> float:
    value = metadata.get(name)
    return float(getattr(value, "value", value) or 0.0)


def step_durations(home: Path) -> dict:
    """From the instance's event log: seconds per asset summed over runs ("steps"), the
    embeddings' model forward and model load ("forward", "load"), each run's (start, end)
    wall-clock timestamps ("runs"), and the precisions the embeddings ran at."""
    from dagster import AssetKey, AssetRecordsFilter, DagsterEventType, DagsterInstance

    seconds: dict[str, float] = defaultdict(float)
    spans = []
    kinds = {DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS, DagsterEventType.RUN_START,
             DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_FAILURE}
    with DagsterInstance.from_config(str(home)) as instance:
        for run in instance.get_runs():
            started, span = {}, {}
            for entry in instance.all_logs(run.run_id, of_type=kinds):
                event = entry.dagster_event
                if event.event_type == DagsterEventType.STEP_START:
                    started[event.step_key] = entry.timestamp
                elif event.event_type == DagsterEventType.STEP_SUCCESS and event.step_key in started:
                    seconds[event.step_key] += entry.timestamp - started.pop(event.step_key)
                elif event.event_type == DagsterEventType.RUN_START:
                    span["start"] = entry.timestamp
                else:
                    span["end"] = entry.timestamp
            spans.append((span["start"], span["end"]))
        records = instance.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey("embeddings")),
                                                  limit=10_000).records
        forward, load, precisions = 0.0, 0.0, set()
        for record in records:
            metadata = record.asset_materialization.metadata
            forward += _number(metadata, "forward_seconds")
            load += _number(metadata, "model_load_seconds")
            precision = metadata.get("precision")
            precisions.add(str(getattr(precision, "value", precision)))
    return {"steps": dict(seconds), "forward": forward, "load": load, "runs": sorted(spans),
            "precisions": precisions}


def run_once(args: argparse.Namespace, shards: int) -> dict:
    """One `clipsieve materialize` of `shards` x args.samples_per_shard on a fresh lake and
    instance: wall seconds, seconds per asset, forward seconds, runs, precisions."""
    from assets.demo.sample_crawl import write_sample_crawl

    workdir = Path(args.workdir)
    crawl = workdir / f"crawl_{shards}x{args.samples_per_shard}_{args.image_size or 'sample'}"
    if not (crawl / "ground_truth.parquet").exists():
        write_sample_crawl(crawl, shards, args.samples_per_shard, seed=0, image_size=args.image_size)
    lake, home = workdir / f"lake_{args.model}", workdir / f"dagster_{args.model}"
    for folder in (lake, home):
        shutil.rmtree(folder, ignore_errors=True)
    home.mkdir(parents=True)
    write_default_config(str(home))  # as `clipsieve materialize` writes a new home's

    # Blocking checks off: a random-weight model's subsets would fail them and skip their
    # indices and audits, and the bench would then time less than the whole pipeline.
    (workdir / "no_checks.toml").write_text("[default]\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "CLIPSIEVE_CHECKS": str(workdir / "no_checks.toml"),
           "CLIPSIEVE_PRECISION": args.precision}
    model_name, pretrained = checkpoint(workdir, args.model)
    command = [str(Path(sys.executable).with_name("clipsieve")), "materialize", "--crawl", str(crawl),
               "--lake", str(lake), "--model", model_name, "--pretrained", pretrained]
    if args.in_process:
        command.append("--in-process")
    launched, started = time.time(), time.perf_counter()  # wall clock, to set against the event log's
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    total = time.perf_counter() - started
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:])
        sys.exit(f"materialize failed ({done.returncode})")
    log = step_durations(home)
    by_asset: dict[str, float] = defaultdict(float)
    for step, value in log["steps"].items():
        by_asset[step.replace("__", "/")] += value
    runs = log["runs"]
    # What no step accounts for, split by when it happens: before the first run (interpreter,
    # imports, definitions, instance), inside runs between steps (Dagster), after the last run.
    fixed = {"before the first run": runs[0][0] - launched,
             "in runs, between steps": sum(end - start for start, end in runs) - sum(by_asset.values()),
             "between runs": sum(later[0] - earlier[1] for earlier, later in zip(runs, runs[1:])),
             "after the last run": launched + total - runs[-1][1]}
    return {"total": total, "by_asset": dict(by_asset), "forward": log["forward"], "load": log["load"],
            "runs": len(runs), "outside": fixed, "precisions": log["precisions"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--samples-per-shard", type=int, default=250)
    parser.add_argument("--image-size", type=int, default=None, help="square clean images (default: 112-192 px)")
    parser.add_argument("--model", default="demo", choices=["demo", "vit-b-32"])
    parser.add_argument("--precision", default="auto", help="the embeddings' precision ($CLIPSIEVE_PRECISION)")
    parser.add_argument("--workdir", default=str(ROOT / "data" / "bench_pipeline"))
    parser.add_argument("--in-process", action="store_true",
                        help="materialize --in-process (runs in the command's process, not launched)")
    parser.add_argument("--marginal", action="store_true",
                        help="also run twice the shards, and print what the extra shards cost: the "
                             "per-sample shares, with the fixed costs of a run taken out")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the pipeline this many times and report the run with the median share "
                             "(this machine's speed drifts by 10%% between runs)")
    args = parser.parse_args()

    runs = [run_once(args, args.shards) for _ in range(max(1, args.repeat))]
    if len(runs) > 1:
        for i, run in enumerate(runs, 1):
            rest = run["total"] - run["forward"]
            print(f"run {i}: {run['total']:.1f} s wall, forward {run['forward']:.1f} s, everything else "
                  f"{rest:.1f} s = {rest / run['total']:.1%}")
        print("the run with the median share:\n")
    result = sorted(runs, key=lambda r: (r["total"] - r["forward"]) / r["total"])[len(runs) // 2]
    total, forward = result["total"], result["forward"]
    print(f"{args.shards} shards x {args.samples_per_shard} samples, model {args.model}, precision "
          f"{args.precision} ({', '.join(sorted(result['precisions']))}), "
          f"{os.cpu_count()} cores: {total:.1f} s wall, {result['runs']} Dagster runs\n")
    print(f"{'stage':<32}{'seconds':>9}{'share':>8}")
    for name, value in sorted(result["by_asset"].items(), key=lambda kv: -kv[1]):
        print(f"{name:<32}{value:>9.1f}{value / total:>8.1%}")
    for name, value in result["outside"].items():
        print(f"{'(' + name + ')':<32}{value:>9.1f}{value / total:>8.1%}")
    outside = total - sum(result["by_asset"].values())
    print(f"\nCLIP forward (embeddings' model calls): {forward:.1f} s = {forward / total:.1%} of wall; "
          f"everything else {total - forward:.1f} s = {(total - forward) / total:.1%}")
    # The floor: what a run costs before and after any sample is touched. Were every stage
    # free, everything else could still be no smaller than this share.
    floor = result["outside"]["before the first run"] + result["outside"]["after the last run"] + result["load"]
    print(f"fixed costs: {floor:.1f} s (before the first run, after the last, and the model load "
          f"{result['load']:.1f} s inside embeddings); with every stage free, everything else would still "
          f"be {floor / (floor + forward):.1%}")
    if not args.marginal:
        return

    # The same pipeline on twice the shards: the difference is what the extra samples cost,
    # with process start, imports, model load and run setup (paid once either way) taken out.
    double = run_once(args, 2 * args.shards)
    extra = args.shards * args.samples_per_shard
    wall, model = double["total"] - total, double["forward"] - forward
    rest = double["total"] - double["forward"]
    print(f"\n{2 * args.shards} shards: {double['total']:.1f} s wall, forward {double['forward']:.1f} s, "
          f"everything else {rest:.1f} s = {rest / double['total']:.1%}")
    print(f"marginal, per extra sample over {extra}: {1000 * wall / extra:.1f} ms wall, "
          f"{1000 * model / extra:.1f} ms forward, {1000 * (wall - model) / extra:.1f} ms everything else "
          f"= {(wall - model) / wall:.1%}")
    print(f"{'stage':<32}{'extra s':>9}")
    for name in sorted(double["by_asset"], key=lambda n: -(double["by_asset"][n] - result["by_asset"].get(n, 0))):
        print(f"{name:<32}{double['by_asset'][name] - result['by_asset'].get(name, 0.0):>9.1f}")
    outside2 = double["total"] - sum(double["by_asset"].values())
    print(f"{'(outside steps)':<32}{outside2 - outside:>9.1f}")


if __name__ == "__main__":
    main()
