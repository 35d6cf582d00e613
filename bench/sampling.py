"""Sampling policies at pool scale: Soft and Hard Cap Sampling (assets/sampling.py) with FLYT's
parameters over a pool of N scores, and the whole sampling policy step (assets/subsets.py:
DuckDB numbers the candidates, the scores are read, drawn, and joined back) on a synthetic
lake of that many candidates.

    .venv/bin/python bench/sampling.py                    # 1,000,000 candidates
    .venv/bin/python bench/sampling.py --pool 10000000    # DataComp small is 12.8M

Scores are normal with the spread of a FLYT score (std 1.5); draws = the pool (total_size_share
1.0), batches of 0.078% of it, penalty 0.15, frequency limit 15. Prints seconds, peak RSS
growth, distinct members and the largest count.
"""

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from assets.sampling import hard_cap_sampling, soft_cap_sampling
from assets.subsets import Policy, run_policy
from resources.catalog import open_catalog
from resources.lake import LakeResource, embeddings_dir, samples_path, score_path

SCS_POLICY = """SET VARIABLE sampling = 'soft_cap';
SET VARIABLE temperature = 1.0;
SET VARIABLE sampling_seed = 0;
SELECT key, shard, similarity AS score FROM scores;"""


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _write_lake(root: Path, pool: int, shards: int, scores: np.ndarray) -> LakeResource:
    """The files the `scores` view needs for `pool` samples over `shards` shards."""
    lake, model = LakeResource(root=str(root)), "bench-model"
    per_shard = -(-pool // shards)
    for number in range(shards):
        start, stop = number * per_shard, min(pool, (number + 1) * per_shard)
        shard = f"{number:05d}"
        keys = pa.array([f"{i:09d}" for i in range(start, stop)])
        base = {"key": keys, "shard": pa.array([shard] * (stop - start))}
        n = stop - start
        lake.write_parquet(samples_path(shard), pa.table({**base, "url": keys, "caption": keys, "uid": keys,
                                                          "image_status": ["ok"] * n}))
        lake.write_parquet(f"{embeddings_dir(shard, model)}/keys.parquet", pa.table({**base, "row": np.arange(n)}))
        columns = {"clip_similarity": {"similarity": scores[start:stop].astype(np.float32)},
                   "nsfw": {"punsafe": np.zeros(n, np.float32)}, "watermark": {"pwatermark": np.zeros(n, np.float32)},
                   "aesthetic": {"aesthetic": np.zeros(n, np.float32)}}
        for name, values in columns.items():
            lake.write_parquet(score_path(shard, name, model), pa.table({**base, **values}))
        lake.write_parquet(score_path(shard, "language"), pa.table({**base, "language": ["en"] * n,
                                                                    "language_score": np.ones(n)}))
        lake.write_parquet(score_path(shard, "quality"), pa.table({
            **base, "caption_words": np.full(n, 5), "caption_chars": np.full(n, 30), "width": np.full(n, 256),
            "height": np.full(n, 256), "min_side": np.full(n, 256), "aspect_ratio": np.ones(n)}))
        lake.write_parquet(score_path(shard, "image_hashes"), pa.table({**base, "sha256": keys,
                                                                        "phash": np.arange(n)}))
        lake.write_parquet(score_path(shard, "toxicity"), pa.table({**base, "toxicity": np.zeros(n),
                                                                    "flagged_terms": np.zeros(n, np.int64)}))
        lake.write_parquet(score_path(shard, "caption_terms"), pa.table({
            **base, "concept_ids": pa.array([[]] * n, pa.list_(pa.int64())), "concept_count": np.zeros(n, np.int64),
            "caption_group": pa.array([None] * n, pa.string())}))
    return lake


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=100)
    args = parser.parse_args()
    scores = np.random.default_rng(0).normal(0, 1.5, args.pool)
    batch = max(1, round(0.00078 * args.pool))
    for name, sample in (("soft_cap", lambda: soft_cap_sampling(scores, args.pool, 0.15, batch)),
                         ("hard_cap", lambda: hard_cap_sampling(scores, args.pool, 15, batch))):
        before, started = _rss_mib(), time.perf_counter()
        drawn = sample()
        print(f"{name}: {args.pool:,} draws in batches of {batch:,}: {time.perf_counter() - started:.1f} s, "
              f"{len(drawn.members):,} distinct ({len(drawn.members) / args.pool:.1%}), max count "
              f"{int(drawn.counts.max())}, peak RSS +{_rss_mib() - before:.0f} MiB")
    with tempfile.TemporaryDirectory(prefix="clipsieve-bench-sampling-") as work:
        started = time.perf_counter()
        lake = _write_lake(Path(work) / "lake", args.pool, args.shards, scores)
        print(f"lake of {args.pool:,} candidates in {args.shards} shards written in "
              f"{time.perf_counter() - started:.1f} s")
        catalog = open_catalog(lake.url, "bench-model")
        scratch = Path(work) / "scratch"
        scratch.mkdir()
        before, started = _rss_mib(), time.perf_counter()
        members, _ = run_policy(catalog, Policy("bench_scs", SCS_POLICY), {}, str(scratch))
        print(f"sampling policy step (run_policy, soft_cap): {time.perf_counter() - started:.1f} s, "
              f"{members.num_rows:,} members, peak RSS +{_rss_mib() - before:.0f} MiB")
        catalog.close()


if __name__ == "__main__":
    main()
