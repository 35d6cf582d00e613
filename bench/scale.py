"""Scale benchmark of the cross-shard steps: a synthetic pool of N samples, each step in a
process of its own, wall time and peak RSS per step, then the cost of one more shard.

    .venv/bin/python bench/scale.py                          # N = 1,000,000 (100 shards x 10,000), 512-d
    .venv/bin/python bench/scale.py --samples 10000000 --lake /big/disk/lake
    .venv/bin/python bench/scale.py --samples 200000 --keep   # keep the lake (reused when it matches)
    .venv/bin/python bench/scale.py --index                  # and a kNN index over the whole pool
    .venv/bin/python bench/scale.py --memory-limit-mb 4096   # each step inside a 4 GiB memory cgroup
    .venv/bin/python bench/scale.py --balance-clusters       # dedup centroids with balancing offsets

The pool (assets/demo/synthetic_pool.py) is written in the lake's own formats: per-shard
float16 embeddings around 1,000 topic directions with planted exact and near duplicates,
and scores/image_hashes; no model forward. The steps are the near-duplicate ones
(dedup_centroids, dedup_assignment over every shard, near_duplicates), and with --index a
kNN index over the whole pool (a subset "all"), run through the functions the assets call.
"one more shard" writes one shard and runs the steps again: the centroids are kept, one
shard is assigned, the pairwise step compares that shard only, the index grows by it.

Peak RSS counts the pages of files a step maps (an on-disk index's lists), which the kernel
reclaims at will; "anonymous" is the memory the step itself holds. With --memory-limit-mb a
step runs in a memory cgroup whose limit charges both (where the machine lets the bench make
one): a step that finishes inside it ran within that much memory.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = "synthetic-512"


def step(name: str, lake_root: str, shards: list[str], settings: dict) -> dict:
    """Run one step in this process; its figures."""
    from assets.dedup import assignment, centroids, near_duplicates
    from resources.catalog import SqlLimits, open_catalog
    from resources.dedup import DedupSettings
    from resources.lake import LakeResource

    settings = dict(settings)
    index_budget = settings.pop("index_budget_bytes")
    lake, dedup = LakeResource(root=lake_root), DedupSettings(**settings)
    if name == "dedup_centroids":
        info = centroids.update_centroids(lake, MODEL, shards, dedup)
        return {k: info[k] for k in ("clusters", "training_samples", "retrained", "pool_now")}
    if name == "dedup_assignment":
        committed = centroids.read_centroids(lake, MODEL)
        todo = [s for s in shards
                if (assignment.read_record(lake, s, MODEL) or {}).get("centroids") != committed.version]
        visits = sum(assignment.assign_shard(lake, s, MODEL, committed, dedup)["visits"] for s in todo)
        return {"shards_assigned": len(todo), "visits": visits}
    if name == "index":
        return index_step(lake, shards, index_budget)
    db = open_catalog(lake, MODEL, limits=SqlLimits(memory_limit=dedup.duckdb_memory_limit))
    try:
        figures = near_duplicates.find_near_duplicates(lake, db, MODEL, shards, dedup, log=lambda _: None)
    finally:
        db.close()
    return {k: figures[k] for k in ("samples", "duplicates", "mode", "compared_shards", "cluster_ranges",
                                    "largest_cluster", "rewritten_shards")}


def index_step(lake, shards: list[str], budget_bytes: int) -> dict:
    """A kNN index over every sample of `shards` (the members of a subset named "all"): built,
    or grown by the shards added since."""
    import pyarrow as pa

    from assets.index_subset import index_subset
    from resources.indexing import IndexSettings
    from resources.lake import members_path

    keys = [lake.read_parquet(f"shards/{s}/embeddings/{MODEL}/keys.parquet", ["key", "shard"]) for s in shards]
    lake.write_parquet(members_path("all"), pa.concat_tables(keys))
    info = index_subset(lake, "all", MODEL, IndexSettings(memory_budget_bytes=budget_bytes))
    return {k: info.get(k) for k in ("factory", "build_mode", "rebuild_reason", "count", "encoded", "recall_at_10",
                                     "search_params", "recall_truth", "memory_bytes")}


class AnonymousPeak:
    """The peak of the process's anonymous resident memory (RssAnon), sampled every 0.1 s.
    Peak RSS also counts the pages of files the step maps (an on-disk index's lists): those
    are page cache the kernel reclaims at will, not memory the step holds."""

    def __init__(self) -> None:
        self.peak, self.running = 0, True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while self.running:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("RssAnon:"):
                        self.peak = max(self.peak, int(line.split()[1]))
            time.sleep(0.1)

    def stop(self) -> int:
        self.running = False
        self.thread.join()
        return round(self.peak / 1024)


def memory_cgroup(limit_mib: int) -> Path | None:
    """A fresh memory cgroup (v1 or v2) under this process's own, limited to `limit_mib`, or
    None where the machine does not let the bench make one. A step run inside it must fit:
    its anonymous memory and the page cache of the files it reads and maps are charged to it,
    and the kernel reclaims the cache (or kills the step) at the limit."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        number, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            base, limit_file = Path("/sys/fs/cgroup/memory") / path.lstrip("/"), "memory.limit_in_bytes"
            break
        if number == "0" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            base, limit_file = Path("/sys/fs/cgroup") / path.lstrip("/"), "memory.max"
    else:
        return None
    group = base / f"clipsieve-scale-{os.getpid()}"
    try:
        group.mkdir(exist_ok=True)
        (group / limit_file).write_text(str(limit_mib * 2**20))
    except OSError:
        return None
    return group


def measured(name: str, lake: str, shards: list[str], settings: dict, cgroup: Path | None = None) -> dict:
    """Run a step in a child process (inside `cgroup`, if given); its wall seconds, peak RSS
    and figures."""
    started = time.perf_counter()
    enter = (lambda: (cgroup / "cgroup.procs").write_text(str(os.getpid()))) if cgroup else None
    child = subprocess.Popen([sys.executable, __file__, "--step", name, "--lake", lake, "--settings",
                              json.dumps(settings), "--shards", ",".join(shards)],
                             cwd=REPO, stdout=subprocess.PIPE, text=True, preexec_fn=enter,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    out, _ = child.communicate()
    seconds = time.perf_counter() - started
    if child.returncode:
        raise SystemExit(f"step {name} failed ({child.returncode}"
                         f"{': killed at the memory limit?' if cgroup and child.returncode < 0 else ''})")
    figures = json.loads(out.strip().splitlines()[-1])
    return {"step": name, "seconds": round(seconds, 1), "peak_rss_mib": figures.pop("_peak_rss_mib"),
            "peak_anon_mib": figures.pop("_peak_anon_mib"), **figures}


def write_pool(lake_root: str, shards: int, per_shard: int, dim: int, start: int = 0) -> float:
    from assets.demo.synthetic_pool import PoolSpec, _topics, write_synthetic_shard
    from resources.lake import LakeResource

    spec = PoolSpec(per_shard=per_shard, dim=dim)
    topics, lake = _topics(spec), LakeResource(root=lake_root)
    began = time.perf_counter()
    for number in range(start, start + shards):
        write_synthetic_shard(lake, spec, number, MODEL, topics)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--per-shard", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--lake", help="lake folder (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the lake afterwards")
    parser.add_argument("--memory-budget-mb", type=int, default=1024, help="the pairwise step's vector budget")
    parser.add_argument("--balance-clusters", action="store_true", help="the dedup resource's balance_clusters")
    parser.add_argument("--index", action="store_true", help="also build a kNN index over the whole pool")
    parser.add_argument("--index-budget-mb", type=int, default=2048, help="the index's memory budget (picks its type)")
    parser.add_argument("--only-index", action="store_true", help="run the index step alone (with --index)")
    parser.add_argument("--memory-limit-mb", type=int, default=0,
                        help="run each step in a memory cgroup of this limit (page cache included; 0: none)")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--settings", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--shards", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:  # a child: one step, its figures as the last line
        import resource

        anonymous = AnonymousPeak()
        figures = step(args.step, args.lake, args.shards.split(","), json.loads(args.settings))
        figures["_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        figures["_peak_anon_mib"] = anonymous.stop()
        print(json.dumps(figures))
        return

    from assets.demo.synthetic_pool import shard_name

    lake = args.lake or tempfile.mkdtemp(prefix="clipsieve-scale-")
    shards = args.samples // args.per_shard
    names = [shard_name(n) for n in range(shards)]
    settings = {"memory_budget_bytes": args.memory_budget_mb * 2**20, "balance_clusters": args.balance_clusters,
                "index_budget_bytes": args.index_budget_mb * 2**20}
    marker = Path(lake) / "synthetic.json"
    wanted = {"shards": shards, "per_shard": args.per_shard, "dim": args.dim}
    if not marker.exists() or json.loads(marker.read_text()) != wanted:
        shutil.rmtree(lake, ignore_errors=True)
        seconds = write_pool(lake, shards, args.per_shard, args.dim)
        marker.write_text(json.dumps(wanted))
        print(f"wrote {shards} shards x {args.per_shard} samples ({args.dim}-d) in {seconds:.0f} s: {lake}")
    dedup_files = () if args.only_index else ("dedup", *(f"shards/{s}/dedup" for s in names + [shard_name(shards)]))
    for derived in ("indices", "subsets", *dedup_files):  # what the steps make: made again
        shutil.rmtree(Path(lake) / derived, ignore_errors=True)
    shutil.rmtree(Path(lake) / "shards" / shard_name(shards), ignore_errors=True)

    steps = (() if args.only_index else ("dedup_centroids", "dedup_assignment", "near_duplicates")) + \
        (("index",) if args.index or args.only_index else ())
    cgroup = memory_cgroup(args.memory_limit_mb) if args.memory_limit_mb else None
    if args.memory_limit_mb and cgroup is None:
        print(f"no memory cgroup could be made here: the steps run without the {args.memory_limit_mb} MiB limit")
    print(f"\npool: {args.samples:,} samples in {shards} shards, {args.dim}-d; pairwise budget "
          f"{args.memory_budget_mb} MiB" + (f"; each step within a {args.memory_limit_mb} MiB memory cgroup "
                                            "(page cache included)" if cgroup else ""))
    print(f"{'step':<20}{'seconds':>9}{'peak RSS MiB':>14}{'anonymous MiB':>15}  figures")

    def run(shards_now: list[str]) -> list[dict]:
        """The steps over `shards_now`, each row printed as it finishes."""
        rows = []
        for name in steps:
            row = measured(name, lake, shards_now, settings, cgroup)
            extra = {k: v for k, v in row.items() if k not in ("step", "seconds", "peak_rss_mib", "peak_anon_mib")}
            print(f"{row['step']:<20}{row['seconds']:>9}{row['peak_rss_mib']:>14}{row['peak_anon_mib']:>15}  "
                  f"{json.dumps(extra)}", flush=True)
            rows.append(row)
        return rows

    try:
        full = sum(r["seconds"] for r in run(names))
        write_pool(lake, 1, args.per_shard, args.dim, start=shards)
        print("-- one more shard")
        added = sum(r["seconds"] for r in run(names + [shard_name(shards)]))
    finally:
        if cgroup:  # empty once its step processes have exited
            cgroup.rmdir()
    print(f"\nfull run {full:.1f} s; one more shard {added:.1f} s ({100 * added / full:.1f}% of the full run)")
    if not args.keep and not args.lake:
        shutil.rmtree(lake, ignore_errors=True)


if __name__ == "__main__":
    main()
