"""Index benchmark: build clipsieve's index over random unit vectors and print its figures.

    .venv/bin/python bench/index.py --vectors 1000000 --dim 128 [--budget-mb 2048] [--factory F]
    .venv/bin/python bench/index.py --vectors 1000000 --dim 128 --dump DIR      # write the vectors for autofaiss
    .venv/bin/python bench/index.py --vectors 1000000 --dim 128 --evaluate PATH # measure another tool's index

Prints the factory the chooser picks (or --factory), build seconds, index memory,
recall@10 against exact search on held-out queries, the tuned search parameters, and
single-query latency percentiles. Random vectors have no cluster structure, so they are
a hard case for approximate indices; real CLIP embeddings reach a recall more easily.
"""

import argparse
import json
import resource
import time
from pathlib import Path

import faiss
import numpy as np

from assets.indices import build_index, choose_factory, exact_neighbours, recall_at_k
from resources.indexing import IndexSettings


def random_unit_vectors(count: int, dim: int, seed: int, clusters: int = 0) -> np.ndarray:
    """Unit vectors rounded through fp16 as the lake stores them: uniform on the sphere, or,
    with `clusters`, around that many random centres (cosine to the centre about 0.7), which
    is closer to how real embeddings cluster."""
    rng = np.random.default_rng(seed)
    centres = random_unit_vectors(clusters, dim, seed=12345) if clusters else None  # shared by all draws
    spread = np.sqrt(1.04 / dim)  # noise norm ~1.02: cosine to the centre ~0.7
    vectors = np.empty((count, dim), np.float32)
    for start in range(0, count, 100_000):
        size = min(100_000, count - start)
        chunk = rng.standard_normal((size, dim), dtype=np.float32)
        if centres is not None:
            chunk = centres[rng.integers(0, clusters, size)] + spread * chunk
        vectors[start:start + size] = chunk.astype(np.float16)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def latency(index: faiss.Index, queries: np.ndarray) -> dict[str, float]:
    """Single-query search latency percentiles, in milliseconds, over 500 queries."""
    latencies = []
    for query in queries[:500]:
        started = time.perf_counter()
        index.search(query[None, :], 10)
        latencies.append((time.perf_counter() - started) * 1000)
    return {f"query_ms_p{p}": round(float(np.percentile(latencies, p)), 3) for p in (50, 95, 99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128, help="128: the demo model; 512: ViT-B-32")
    parser.add_argument("--budget-mb", type=int, default=2048)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--factory", help="force a factory string instead of the chooser's")
    parser.add_argument("--clusters", type=int, default=0, help="draw vectors around this many centres (0: uniform)")
    parser.add_argument("--dump", help="write the vectors to DIR/embeddings.npy and stop (input for autofaiss)")
    parser.add_argument("--evaluate", help="measure recall@10 and latency of an index file built elsewhere")
    parser.add_argument("--params", default="", help="with --evaluate: faiss search parameters, e.g. nprobe=16")
    args = parser.parse_args()

    vectors = random_unit_vectors(args.vectors, args.dim, seed=0, clusters=args.clusters)
    queries = random_unit_vectors(args.queries, args.dim, seed=1, clusters=args.clusters)
    if args.dump:
        Path(args.dump).mkdir(parents=True, exist_ok=True)
        np.save(Path(args.dump) / "embeddings.npy", vectors)
        return
    if args.evaluate:
        index = faiss.read_index(args.evaluate)
        if args.params:
            faiss.ParameterSpace().set_index_parameters(index, args.params)
        truth = exact_neighbours(vectors, queries, 10)
        print(json.dumps({"index": args.evaluate, "ntotal": int(index.ntotal),
                          "memory_bytes": int(faiss.serialize_index(index).nbytes),
                          "recall_at_10": recall_at_k(index, queries, truth, 10), **latency(index, queries)}, indent=2))
        return
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
    figures = {
        **info,
        "build_and_tune_seconds": round(total, 1),
        **latency(index, queries),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
