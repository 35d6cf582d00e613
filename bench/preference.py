"""Preference pairs at shard scale: the rules (assets/preference/pairs.py: DuckDB ranks each
image's candidates and pairs them) over a synthetic shard of N images with K candidates each,
and the candidates' token counting, text encoding (the caption path of the embeddings step)
and scoring with the demo model (assets/preference/candidates.score).

    .venv/bin/python bench/preference.py                       # 10,000 images x 5 candidates
    .venv/bin/python bench/preference.py --images 100000 --encode 0

Similarities are drawn like the demo model's on the sample crawl (true caption ~0.9, the others
0.5-0.9); 6% of images are over the ptext cut. Prints seconds and peak RSS growth per stage,
and the pairs made.
"""

import argparse
import resource
import time

import numpy as np
import pyarrow as pa

from assets.preference.candidates import CANDIDATE_SCHEMA
from assets.preference.pairs import rank_and_pair

RULES = {"min_similarity": 0.508, "min_margin": 0.05, "min_lead": 0.07, "max_ptext": 0.5,
         "pairing": "best_vs_rest", "max_pairs": 3}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_shard(images: int, per_image: int, seed: int = 0) -> tuple[pa.Table, pa.Table]:
    rng = np.random.default_rng(seed)
    n = images * per_image
    keys = np.repeat(np.arange(images), per_image).astype(str)
    similarity = rng.uniform(0.5, 0.9, n).astype(np.float32)
    similarity[::per_image] = rng.normal(0.9, 0.03, images)
    tokens = rng.integers(8, 40, n).astype(np.int32)
    candidates = pa.table({
        "key": keys, "shard": pa.array(["00000"] * n),
        "candidate_id": np.tile(np.arange(per_image), images).astype(np.int32),
        "candidate": pa.array([f"caption {i}" for i in range(n)]), "sources": pa.array(["captioner"] * n),
        "tokens": tokens, "over_token_limit": tokens > 32, "similarity": similarity,
    }, schema=CANDIDATE_SCHEMA)
    ptext = np.where(rng.random(images) < 0.06, 0.9, 0.01).astype(np.float32)
    return candidates, pa.table({"key": np.arange(images).astype(str), "ptext": ptext})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--per-image", type=int, default=5)
    parser.add_argument("--encode", type=int, default=20_000, help="candidate texts to score (0: skip)")
    args = parser.parse_args()

    candidates, images = synthetic_shard(args.images, args.per_image)
    before, started = _rss_mib(), time.perf_counter()
    result = rank_and_pair(candidates, images, RULES, context_length=32)
    print(f"rules: {candidates.num_rows:,} candidates of {args.images:,} images in "
          f"{time.perf_counter() - started:.2f} s, peak RSS +{_rss_mib() - before:.0f} MiB; "
          f"{result.pairs.num_rows:,} pairs, {result.dropped.num_rows:,} dropped rows")
    if args.encode:
        from assets.demo import synthetic
        from assets.embeddings import encode_texts
        from assets.preference.candidates import score
        from resources.clip_model import ClipModelResource

        clip = ClipModelResource().load()
        rng = np.random.default_rng(1)
        found = {}
        for i in range(args.encode // 4):  # the true caption and its three hallucinations
            scene = synthetic.random_scene(rng)
            true = synthetic.english_caption(scene, rng)
            texts = [true, *synthetic.hallucinations(scene, true, rng).values()]
            found[str(i)] = {text: ["captioner"] for text in texts}
        image = rng.normal(size=(len(found), 128)).astype(np.float32)
        started = time.perf_counter()
        table = score(found, "00000", list(found), image, clip.tokenizer, 32, lambda t: encode_texts(clip, t, 256))
        seconds = time.perf_counter() - started
        print(f"candidates: {table.num_rows:,} texts of {len(found):,} images counted, embedded with the demo model "
              f"and scored in {seconds:.2f} s ({table.num_rows / seconds:,.0f}/s, {clip.device}, {clip.precision})")

if __name__ == "__main__":
    main()
