"""Search service benchmark: text-query latency and queries/s on a 1M-vector index, through
`clipsieve serve`'s HTTP routes, and the server's RSS over 100 queries of k = 10,000.

    .venv/bin/python bench/serve.py                        # 1,000,000 x 512-d, ViT-B-32 text tower
    .venv/bin/python bench/serve.py --vectors 200000 --model clipsieve-demo
    .venv/bin/python bench/serve.py --work /big/disk/serve-bench   # keep the index and table there

The vectors are the synthetic pool's (assets/demo/synthetic_pool.py: clustered around topic
directions, 512-d like ViT-B-32's); the index is what the index asset builds for that many
vectors within the default memory budget (assets/indices.py: choose_factory, tuned to recall
0.95); the row table has the served columns with random scores, memory-mapped as the service
keeps it. Queries are real text encodings: a ViT-B-32 with seeded random weights (the
architecture sets the cost; no weights are downloaded) or the demo model. Each request is a
ClipClient body (num_images 40, safe mode and dedup on) posted to /knn-service on loopback,
one at a time for latency, from four threads for queries/s. The server runs in this process
(uvicorn in a thread); RSS is this process's.
"""

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from assets.demo.synthetic_pool import PoolSpec, synthetic_shard  # noqa: E402
from assets.indices import build_index, encode_query  # noqa: E402
from orchestration.serve.served_index import AESTHETIC_LEVELS, ServedIndex  # noqa: E402

COLOURS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple"]
THINGS = ["car", "dog", "cat", "house", "tree", "bicycle", "boat", "flower", "mountain", "chair", "bird", "cup"]


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def vectors_and_index(count: int, dim: int, work: Path) -> tuple[faiss.Index, str]:
    """The index (built, or read from `work`) and what it is: factory, search parameters, recall."""
    path, about = work / f"index-{count}-{dim}.faiss", work / f"index-{count}-{dim}.json"
    if path.exists() and about.exists():
        info = json.loads(about.read_text())
        index = faiss.read_index(str(path))
        if info.get("search_params"):
            faiss.ParameterSpace().set_index_parameters(index, info["search_params"])
        return index, f"{info['factory']} ({info.get('search_params')}, recall@10 {info['recall_at_10']})"
    per_shard = 10_000
    spec = PoolSpec(per_shard=per_shard, dim=dim, seed=7)
    vectors = np.concatenate([synthetic_shard(spec, n).image for n in range(-(-count // per_shard))])[:count]
    queries = vectors[np.random.default_rng(0).choice(count, 500, replace=False)]
    queries = queries + np.random.default_rng(1).normal(0, 0.05, queries.shape).astype(np.float32)
    started = time.perf_counter()
    index, info = build_index(vectors, queries)
    print(f"index built in {time.perf_counter() - started:.0f} s", flush=True)
    faiss.write_index(index, str(path))
    about.write_text(json.dumps(info, default=str))
    return index, f"{info['factory']} ({info.get('search_params')}, recall@10 {info['recall_at_10']})"


def row_table(count: int, work: Path) -> pa.Table:
    """The served columns with random scores (about 5% unsafe, 4% duplicates), memory-mapped."""
    path = work / f"table-{count}.arrow"
    if not path.exists():
        rng = np.random.default_rng(3)
        keys = np.char.add("k", np.arange(count).astype(str))
        duplicate = rng.random(count) < 0.04
        group_id = np.arange(count)
        group_id[duplicate] = rng.integers(0, count, duplicate.sum())
        table = pa.table({
            "row": np.arange(count), "key": keys, "shard": np.char.add("s", (np.arange(count) // 10_000).astype(str)),
            "embedding_row": np.arange(count) % 10_000, "tar_member": np.char.add(keys, ".jpg"),
            "url": np.char.add("https://example.com/", np.char.add(keys, ".jpg")),
            "caption": np.char.add("a synthetic caption number ", np.arange(count).astype(str)),
            "uid": np.char.zfill(np.arange(count).astype(str), 32),
            "similarity": rng.uniform(0.2, 0.4, count), "punsafe": rng.beta(0.5, 8, count),
            "pwatermark": rng.beta(1, 5, count), "aesthetic": rng.normal(5, 1, count),
            "toxicity": rng.beta(0.5, 10, count), "language": np.where(rng.random(count) < 0.8, "en", "de"),
            "language_score": rng.uniform(0.5, 1, count), "caption_words": rng.integers(1, 30, count),
            "min_side": rng.integers(64, 1024, count), "aspect_ratio": rng.uniform(1, 3, count),
            "is_duplicate": duplicate, "dedup_group": keys[group_id], "dedup_group_id": group_id,
            "in_bench": np.ones(count, bool),
            "pviolence": rng.beta(0.5, 10, count).astype(np.float32)})
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).read_all()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> list:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--model", default="ViT-B-32", help="ViT-B-32 (random weights) or clipsieve-demo")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--large-k", type=int, default=10_000)
    parser.add_argument("--large-queries", type=int, default=100)
    parser.add_argument("--work", help="folder kept between runs (index, table, checkpoint)")
    args = parser.parse_args()

    import open_clip
    import torch
    import uvicorn
    from safetensors.torch import save_file

    from orchestration.serve.app import create_app
    from orchestration.serve.service import SearchService
    from resources.clip_model import DEMO_CHECKPOINT, DEMO_MODEL, ClipModelResource
    from resources.lake import LakeResource

    work = Path(args.work or tempfile.mkdtemp(prefix="clipsieve-serve-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.model == DEMO_MODEL:
        checkpoint = DEMO_CHECKPOINT
    else:
        checkpoint = str(work / f"{args.model}-random.safetensors")
        if not Path(checkpoint).exists():
            torch.manual_seed(0)
            model = open_clip.create_model(args.model)
            save_file({k: v.detach().half().contiguous() for k, v in model.state_dict().items()}, checkpoint)
    clip_resource = ClipModelResource(model_name=args.model, pretrained=checkpoint)
    clip = clip_resource.load()
    dim = clip.model.text_projection.shape[1] if args.model != DEMO_MODEL else args.dim
    if dim != args.dim:
        print(f"--dim {args.dim} does not match {args.model}'s {dim}: using {dim}")
    index, described = vectors_and_index(args.vectors, dim, work)
    table = row_table(args.vectors, work)
    served = ServedIndex("bench", index, table, np.zeros((AESTHETIC_LEVELS, dim), np.float32), {})
    empty = Path(tempfile.mkdtemp(prefix="clipsieve-serve-bench-lake-"))
    service = SearchService(LakeResource(root=str(empty)), clip, clip_resource.model_id, empty, empty, checkpoint,
                            indices={"bench": served})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}/knn-service"
    texts = [f"a photo of a {c} {t}" for c in COLOURS for t in THINGS]

    def body(i: int, k: int = 40) -> dict:
        return {"text": f"{texts[i % len(texts)]} number {i}", "modality": "image", "indice_name": "bench",
                "num_images": 40, "num_result_ids": k, "deduplicate": True, "use_safety_model": True,
                "use_violence_detector": False, "aesthetic_score": "", "aesthetic_weight": ""}

    for i in range(5):  # warm up
        post(url, body(i))
    latencies = []
    for i in range(args.queries):
        started = time.perf_counter()
        results = post(url, body(i))
        latencies.append(1000 * (time.perf_counter() - started))
    assert len(results) == 40
    encode = []
    for i in range(50):
        started = time.perf_counter()
        encode_query(clip, text=texts[i % len(texts)])
        encode.append(1000 * (time.perf_counter() - started))
    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: post(url, body(i)), range(args.queries)))
    throughput = args.queries / (time.perf_counter() - started)
    rss, large = {0: rss_mib()}, []
    for i in range(1, args.large_queries + 1):
        started = time.perf_counter()
        results = post(url, body(i, args.large_k))
        large.append(1000 * (time.perf_counter() - started))
        if i in (1, 10, 50, args.large_queries):
            rss[i] = rss_mib()
    server.should_exit = True

    quantiles = statistics.quantiles(latencies, n=100)
    print(f"\n{args.vectors:,} vectors, {dim}-d, {described}; text tower {args.model}")
    print(f"text query over HTTP (num_images 40, safe + dedup): p50 {quantiles[49]:.1f} ms, "
          f"p95 {quantiles[94]:.1f} ms, {1000 / statistics.mean(latencies):.1f} queries/s one at a time")
    print(f"  of which text encoding p50 {statistics.median(encode):.1f} ms")
    print(f"queries/s from 4 client threads: {throughput:.1f}")
    print(f"{args.large_queries} queries of k = {args.large_k:,} ({len(results)} results each, 40 with metadata): "
          f"p50 {statistics.median(large):.0f} ms; RSS " +
          ", ".join(f"after {n}: {v:.0f} MiB" for n, v in rss.items()))


if __name__ == "__main__":
    main()
