"""Index benchmark: build clipsieve's index over random unit vectors and print its figures.

    .venv/bin/python bench/index.py --vectors 1000000 --dim 128 [--budget-mb 2048] [--factory F]

Prints the factory the chooser picks (or --factory), build seconds, index memory,
recall@10 against exact search on held-out queries, the tuned search parameters, and
single-query latency percentiles. Random vectors have no cluster structure, so they are
a hard case for approximate indices; real CLIP embeddings reach a recall more easily.
"""

import argparse
import json
import resource
import time

import faiss
import numpy as np

from assets.indices import IndexSettings, build_index, choose_factory


def random_unit_vectors(count: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = np.empty((count, dim), np.float32)
    for start in range(0, count, 100_000):  # fp16, as the lake stores embeddings
        chunk = rng.standard_normal((min(100_000, count - start), dim), dtype=np.float32).astype(np.float16)
        vectors[start:start + len(chunk)] = chunk
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128, help="128: the demo model; 512: ViT-B-32")
    parser.add_argument("--budget-mb", type=int, default=2048)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--factory", help="force a factory string instead of the chooser's")
    args = parser.parse_args()

    vectors = random_unit_vectors(args.vectors, args.dim, seed=0)
    queries = random_unit_vectors(args.queries, args.dim, seed=1)
    settings = IndexSettings(args.budget_mb * 2**20, args.target_recall, args.queries)
    if args.factory:
        import assets.indices as indices
        indices.choose_factory = lambda count, dim, budget: args.factory
    print(f"chooser: {choose_factory(args.vectors, args.dim, settings.memory_budget_bytes)} "
          f"for {args.vectors} x {args.dim} within {args.budget_mb} MB; faiss threads {faiss.omp_get_max_threads()}",
          flush=True)
    started = time.perf_counter()
    index, info = build_index(vectors, queries, settings)
    total = time.perf_counter() - started
    latencies = []
    for query in queries[:500]:
        t0 = time.perf_counter()
        index.search(query[None, :], 10)
        latencies.append((time.perf_counter() - t0) * 1000)
    figures = {
        **info,
        "build_and_tune_seconds": round(total, 1),
        "query_ms_p50": round(float(np.percentile(latencies, 50)), 3),
        "query_ms_p95": round(float(np.percentile(latencies, 95)), 3),
        "query_ms_p99": round(float(np.percentile(latencies, 99)), 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
