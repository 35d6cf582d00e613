"""Soak: a many-shard sample crawl through parallel per-shard runs, then the cross-shard run.

    .venv/bin/python bench/soak.py --shards 52 --samples-per-shard 250 --runs 4 --workdir /tmp/soak

1. writes the sample crawl (kept in the workdir and reused when it already exists);
2. starts `--runs` processes at once, each running the per-shard assets of a contiguous
   slice of the shards (`run_pipeline(..., shards=slice, cross_shard=False)`), all over
   one lake and one SQLite DAGSTER_HOME;
3. then `clipsieve materialize` over the whole crawl, which finds every shard done and
   runs only the cross-shard assets (dedup, subsets, indices, audits, evaluation).

`--hostile N` replaces N successful images per shard with hostile ones (cycling through a
PostScript file named .jpg, a progressive JPEG with a scan-pixel bomb, a 1 x 150,000 PNG,
a LAB TIFF, a GIF, a truncated JPEG, zero bytes, a 16-bit PNG that must embed): the
figures then say how each kind was recorded, and whether every parquet row and usable
image is accounted for.

Prints samples processed, failures (image statuses, embedding failures, failed runs),
wall times, and memory: each process's VmRSS and VmHWM polled from /proc every
`--poll` seconds, and each run's RSS after every shard, logged by the run itself, with
its least-squares slope in MB per shard (the first shard, which loads the model, is left
out). RSS is given twice: as the process holds it, and "live", after a garbage collection
and glibc's malloc_trim. glibc keeps freed blocks in its arenas, so held RSS creeps up
over the first dozen shards and levels off; live memory is what a leak would grow.
(The worker's trim after each shard also lowers the held RSS a little.) Figures are
printed, never asserted: they depend on the machine. Linux only (/proc).
"""

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def proc_memory_mb(pid: int) -> tuple[float, float] | None:
    """(VmRSS, VmHWM) of a process in MB, or None once it has gone."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        return None


def live_memory_mb() -> float:
    """RSS after a garbage collection and glibc's malloc_trim: memory still in use, without
    what the allocator keeps from freed blocks (what a leak would show in)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: plain RSS
        pass
    return (proc_memory_mb(os.getpid()) or (0.0, 0.0))[0]


def worker(crawl: str, lake: str, shards: list[str], log_path: str) -> None:
    """One parallel run: the per-shard assets of `shards`, one line of JSON per event."""
    from orchestration.dagster_server import DagsterServer
    from orchestration.definitions import build_definitions, location_env
    from orchestration.instance import open_instance
    from orchestration.runner import run_pipeline

    with open(log_path, "a") as out:
        def log(message: str) -> None:
            rss, hwm = proc_memory_mb(os.getpid()) or (0.0, 0.0)
            # "shard X: materializing": the run of the shard before it has finished.
            shard = message.split(":")[0].removeprefix("shard ") if message.startswith("shard ") else None
            out.write(json.dumps({"t": time.time(), "shard": shard, "rss_mb": rss, "live_mb": live_memory_mb(),
                                  "hwm_mb": hwm, "message": message.splitlines()[0]}) + "\n")
            out.flush()

        try:
            home = os.environ["DAGSTER_HOME"]
            with DagsterServer(home, location_env(crawl=crawl, lake=lake), log=log) as server:
                report = run_pipeline(build_definitions(crawl=crawl, lake=lake), open_instance(home), server,
                                      in_process=True, log=log, shards=shards, cross_shard=False)
            log(f"done: {len(report.per_shard_runs)} shard run(s)")
        except RuntimeError as error:  # failed shard runs: the others went on
            log(f"done with failures: {error}")
            raise SystemExit(1) from None


class MemoryPoller(threading.Thread):
    """Samples VmRSS and VmHWM of the given processes until they have all ended."""

    def __init__(self, processes: dict[str, subprocess.Popen], interval: float):
        super().__init__(daemon=True)
        self.processes, self.interval = processes, interval
        self.samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in processes}

    def run(self) -> None:
        while any(p.poll() is None for p in self.processes.values()):
            for name, process in self.processes.items():
                memory = proc_memory_mb(process.pid) if process.poll() is None else None
                if memory:
                    self.samples[name].append((time.time(), *memory))
            time.sleep(self.interval)


def slope_mb_per_shard(rss: list[float]) -> float | None:
    """Least-squares slope of RSS after each shard, past the first (model load, imports)."""
    after_first = rss[1:]
    if len(after_first) < 3:
        return None
    return float(np.polyfit(np.arange(len(after_first)), after_first, 1)[0])


def run_stage(commands: dict[str, list[str]], env: dict, logs: Path, interval: float) -> tuple[dict, float, dict]:
    """Start every command at once; wait; return (return codes, wall seconds, memory samples)."""
    started = time.time()
    processes = {}
    for name, command in commands.items():
        with open(logs / f"{name}.out", "w") as stdout, open(logs / f"{name}.err", "w") as stderr:
            processes[name] = subprocess.Popen(command, cwd=ROOT, env=env, stdout=stdout, stderr=stderr)
    poller = MemoryPoller(processes, interval)
    poller.start()
    codes = {name: p.wait() for name, p in processes.items()}
    poller.join()
    return codes, time.time() - started, poller.samples


def hostile_images() -> dict[str, bytes]:
    """Hostile images, generated: kind -> bytes (stored under the sample's .jpg name)."""
    import io

    from PIL import Image

    def encoded(image: Image.Image, fmt: str, **options) -> bytes:
        out = io.BytesIO()
        image.save(out, format=fmt, **options)
        return out.getvalue()

    progressive = encoded(Image.new("RGB", (6000, 6000), (120, 80, 40)), "JPEG", progressive=True)
    last = progressive.rindex(b"\xff\xda")
    jpeg = encoded(Image.new("RGB", (64, 48), (30, 90, 200)), "JPEG")
    grey16 = Image.fromarray(np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16))
    return {
        "postscript": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n{ } loop\n",
        "scan_bomb": progressive[:last] + progressive[last:-2] * 60 + b"\xff\xd9",
        "banner_png": encoded(Image.new("L", (150_000, 1), 128), "PNG"),
        "lab_tiff": encoded(Image.new("LAB", (32, 32)), "TIFF"),
        "gif": encoded(Image.new("P", (32, 32)), "GIF"),
        "truncated_jpeg": jpeg[: len(jpeg) // 2],
        "zero_bytes": b"",
        "png_16_bit": encoded(grey16, "PNG"),
    }


def plant_hostile(source: Path, target: Path, per_shard: int) -> dict[str, str]:
    """A copy of the crawl at `source` in `target`, `per_shard` successful images of each
    shard replaced by hostile ones; returns key -> kind."""
    import io
    import shutil
    import tarfile

    kinds = list(hostile_images().items())
    planted: dict[str, str] = {}
    target.mkdir(parents=True)
    for path in source.glob("*.parquet"):
        if not (source / f"{path.stem}.tar").exists():  # the sample crawl's ground truth
            shutil.copy(path, target / path.name)
    for path in sorted(source.glob("*.tar")):
        shard = path.stem
        for suffix in (".parquet", "_stats.json"):
            shutil.copy(source / f"{shard}{suffix}", target / f"{shard}{suffix}")
        rows = pq.read_table(source / f"{shard}.parquet", columns=["key", "status"]).to_pylist()
        chosen = [r["key"] for r in rows if r["status"] == "success"][:per_shard]
        with tarfile.open(path) as tar_in, tarfile.open(target / path.name, "w") as tar_out:
            for member in tar_in.getmembers():
                data = tar_in.extractfile(member).read()
                key = member.name.rsplit(".", 1)[0]
                if key in chosen and member.name.endswith(".jpg"):
                    kind, data = kinds[len(planted) % len(kinds)]
                    planted[key] = kind
                    member.size = len(data)
                tar_out.addfile(member, io.BytesIO(data))
    return planted


def hostile_outcomes(lake: str, planted: dict[str, str]) -> dict:
    """How each planted kind was recorded: kind -> {status: reason's start -> count}."""
    from resources.lake import LakeResource

    store = LakeResource(root=lake)
    outcomes: dict[str, dict[str, int]] = {}
    for path in store.glob("shards/*/samples.parquet"):
        for row in store.read_parquet(path, columns=["key", "image_status", "image_error"]).to_pylist():
            kind = planted.get(row["key"])
            if kind is not None:
                said = f"{row['image_status']}: {(row['image_error'] or '')[:60]}"
                counts = outcomes.setdefault(kind, {})
                counts[said] = counts.get(said, 0) + 1
    return outcomes


def lake_counts(lake: str) -> dict:
    """Samples, statuses and embedding figures read back from the lake."""
    import pyarrow.compute as pc

    from resources.embedding_files import embedding_failures
    from resources.lake import LakeResource

    store = LakeResource(root=lake)
    statuses: dict[str, int] = {}
    rows = embedded = failures = parquet_rows = 0
    for path in store.glob("shards/*/samples.parquet"):
        table = store.read_parquet(path, columns=["image_status", "parquet_row"])
        rows += table.num_rows
        parquet_rows += int(pc.count(table.column("parquet_row")).as_py())
        for entry in pc.value_counts(table.column("image_status")).to_pylist():
            statuses[entry["values"]] = statuses.get(entry["values"], 0) + entry["counts"]
    for path in store.glob("shards/*/embeddings/*/keys.parquet"):
        embedded += store.read_parquet(path, columns=["key"]).num_rows
        _, shard, _, model = path.split("/")[:4]
        failures += embedding_failures(store, shard, model).num_rows
    return {"samples": rows, "parquet_rows_in_samples": parquet_rows,
            "image_status": dict(sorted(statuses.items())), "embedded": embedded,
            "embedding_failures": failures, "shards": len(store.glob("shards/*/samples.parquet"))}


def _error_lines(stderr: str) -> str:
    """clipsieve's own failure summary (failed checks and steps), else the end of stderr."""
    start = stderr.rfind("clipsieve: ")
    return stderr[start:].strip() if start >= 0 else stderr[-2000:].strip()


def per_shard_rss(log_path: Path) -> tuple[list[float], list[float], list[str]]:
    """RSS and live memory (MB) after each shard's run, from the worker's log, and the
    failure lines."""
    rss, live, failed = [], [], []
    for line in log_path.read_text().splitlines() if log_path.exists() else []:
        event = json.loads(line)
        if event["shard"] is not None or event["message"].startswith("done"):
            rss.append(event["rss_mb"])
            live.append(event["live_mb"])
        if "failed" in event["message"] or "failures" in event["message"]:
            failed.append(event["message"])
    return rss[1:], live[1:], failed  # the first reading is taken before any shard ran


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=52)
    parser.add_argument("--samples-per-shard", type=int, default=250)
    parser.add_argument("--runs", type=int, default=4, help="per-shard runs at once")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="/tmp/clipsieve-soak")
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between memory samples")
    parser.add_argument("--json-out", help="also write the figures here")
    parser.add_argument("--hostile", type=int, default=0, metavar="N",
                        help="replace N successful images per shard with hostile ones")
    parser.add_argument("--checks", help="check bounds file for the runs ($CLIPSIEVE_CHECKS; default: the project's)")
    parser.add_argument("--worker", nargs=4, metavar=("CRAWL", "LAKE", "SHARDS", "LOG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        crawl, lake, shards, log_path = args.worker
        worker(crawl, lake, shards.split(","), log_path)
        return

    from assets.demo.sample_crawl import write_sample_crawl
    from resources.crawl import CrawlResource

    workdir = Path(args.workdir)
    crawl = workdir / f"crawl_{args.shards}x{args.samples_per_shard}_seed{args.seed}"
    lake, home, logs = workdir / "lake", workdir / "dagster_home", workdir / "logs"
    for folder in (lake, home, logs):
        subprocess.run(["rm", "-rf", str(folder)], check=True)
    logs.mkdir(parents=True)  # DAGSTER_HOME is left for the parallel runs to create together
    started = time.time()
    if not (crawl / "ground_truth.parquet").exists():
        write_sample_crawl(crawl, args.shards, args.samples_per_shard, args.seed)
    planted: dict[str, str] = {}
    if args.hostile:
        hostile = workdir / f"{crawl.name}_hostile{args.hostile}"
        subprocess.run(["rm", "-rf", str(hostile)], check=True)
        planted = plant_hostile(crawl, hostile, args.hostile)
        crawl = hostile
    crawl_seconds = time.time() - started

    shards = CrawlResource(root=str(crawl)).shards()
    slices = [list(s) for s in np.array_split(np.array(shards), args.runs) if len(s)]
    # One process per run on a shared machine: split the cores between them (torch, faiss).
    threads = str(max(1, (os.cpu_count() or 1) // len(slices)))
    base = {**os.environ, "DAGSTER_HOME": str(home), **({"CLIPSIEVE_CHECKS": args.checks} if args.checks else {})}
    env = {**base, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    commands = {f"run{i}": [sys.executable, __file__, "--worker", str(crawl), str(lake), ",".join(s),
                            str(logs / f"run{i}.jsonl")] for i, s in enumerate(slices)}
    codes, per_shard_seconds, memory = run_stage(commands, env, logs, args.poll)
    cross_env = base
    cross = [sys.executable, "-m", "orchestration.cli", "materialize", "--crawl", str(crawl), "--lake", str(lake)]
    cross_codes, cross_seconds, cross_memory = run_stage({"cross_shard": cross}, cross_env, logs, args.poll)
    codes.update(cross_codes)
    memory.update(cross_memory)

    counts = lake_counts(str(lake))
    crawl_parquet_rows = sum(pq.read_metadata(p).num_rows for p in crawl.glob("*.parquet") if p.stem.isdigit())
    runs = {}
    for name, samples in memory.items():
        rss, live, failed = per_shard_rss(logs / f"{name}.jsonl")
        runs[name] = {
            "return_code": codes[name],
            "shards": len(slices[int(name[3:])]) if name.startswith("run") else None,
            "peak_rss_mb": round(max((s[2] for s in samples), default=0.0), 1),  # VmHWM
            "max_polled_rss_mb": round(max((s[1] for s in samples), default=0.0), 1),
            "rss_after_each_shard_mb": [round(r, 1) for r in rss],
            "slope_mb_per_shard": None if (slope := slope_mb_per_shard(rss)) is None else round(slope, 2),
            "live_after_each_shard_mb": [round(r, 1) for r in live],
            "live_slope_mb_per_shard": None if (slope := slope_mb_per_shard(live)) is None else round(slope, 2),
            "failures": failed,
            "error": _error_lines((logs / f"{name}.err").read_text()) if codes[name] else "",
        }
    cross_out = (logs / "cross_shard.out").read_text()
    figures = {
        "crawl": {"shards": args.shards, "samples_per_shard": args.samples_per_shard, "seed": args.seed,
                  "written_seconds": round(crawl_seconds, 1)},
        "parallel_runs": len(slices), "threads_per_run": int(threads), "cpus": os.cpu_count(),
        "lake": counts,
        "accounted": {"crawl_parquet_rows": crawl_parquet_rows,
                      "every_parquet_row_in_samples": crawl_parquet_rows == counts["parquet_rows_in_samples"],
                      "every_usable_image_embedded_or_a_failure_row":
                          counts["image_status"].get("ok", 0) == counts["embedded"] + counts["embedding_failures"]},
        "hostile": hostile_outcomes(str(lake), planted) if planted else {},
        "wall_seconds": {"per_shard_stage": round(per_shard_seconds, 1), "cross_shard_stage": round(cross_seconds, 1),
                         "total": round(per_shard_seconds + cross_seconds, 1)},
        "samples_per_second_per_shard_stage": round(counts["samples"] / per_shard_seconds, 1),
        "cross_shard_did_per_shard_work": "shard " in cross_out.split("cross-shard")[0],
        "runs": runs,
    }
    print_figures(figures)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=2) + "\n")


def print_figures(f: dict) -> None:
    lake, wall = f["lake"], f["wall_seconds"]
    print(f"crawl: {f['crawl']['shards']} shards x {f['crawl']['samples_per_shard']} samples "
          f"(written in {f['crawl']['written_seconds']} s); {f['parallel_runs']} parallel runs, "
          f"{f['threads_per_run']} thread(s) each, {f['cpus']} CPUs")
    print(f"samples processed: {lake['samples']} rows in {lake['shards']} shards; embedded {lake['embedded']}; "
          f"embedding failures {lake['embedding_failures']}")
    print(f"image_status: {json.dumps(lake['image_status'])}")
    print(f"accounted: {json.dumps(f['accounted'])}")
    for kind, said in f["hostile"].items():
        print(f"hostile {kind}: {json.dumps(said)}")
    print(f"wall: per-shard stage {wall['per_shard_stage']} s ({f['samples_per_second_per_shard_stage']} samples/s), "
          f"cross-shard stage {wall['cross_shard_stage']} s, total {wall['total']} s; "
          f"cross-shard run redid per-shard work: {f['cross_shard_did_per_shard_work']}")
    print("memory: RSS as held; live = RSS after gc + malloc_trim (no allocator caches); "
          "slopes by least squares over the shards after the first")
    print(f"{'run':<12}{'rc':>4}{'shards':>8}{'peak MB':>10}{'first MB':>10}{'last MB':>10}{'MB/shard':>10}"
          f"{'live first':>12}{'live last':>11}{'live MB/shard':>15}")

    def cell(value) -> str:
        return "-" if value is None else str(value)

    for name, run in f["runs"].items():
        rss, live = run["rss_after_each_shard_mb"], run["live_after_each_shard_mb"]
        print(f"{name:<12}{run['return_code']:>4}{cell(run['shards']):>8}{run['peak_rss_mb']:>10}"
              f"{cell(rss[0] if rss else None):>10}{cell(rss[-1] if rss else None):>10}"
              f"{cell(run['slope_mb_per_shard']):>10}{cell(live[0] if live else None):>12}"
              f"{cell(live[-1] if live else None):>11}{cell(run['live_slope_mb_per_shard']):>15}")
    for name, run in f["runs"].items():
        if run["rss_after_each_shard_mb"]:
            print(f"{name} RSS after each shard (MB): {run['rss_after_each_shard_mb']}")
            print(f"{name} live after each shard (MB): {run['live_after_each_shard_mb']}")
        for line in run["failures"]:
            print(f"{name} failure: {line}")
        if run["error"]:
            print(f"{name} failed:\n{run['error']}")


if __name__ == "__main__":
    main()
