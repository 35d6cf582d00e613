"""The evaluation's figures, computed by DuckDB over files, against the same figures by
brute force in numpy on a small pool with ties and missing scores."""

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from assets.evaluation import evaluate, read_truth
from assets.subsets import load_policies
from resources.catalog import Catalog


def _brute_auroc(badness: np.ndarray, positive: np.ndarray) -> float:
    """P(a positive outscores a negative), ties counting half, over every pair."""
    pos, neg = badness[positive], badness[~positive]
    return float(((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum())
                 / (len(pos) * len(neg)))


def test_filter_figures_equal_a_brute_force_count(tmp_path):
    rng = np.random.default_rng(4)
    n = 600
    keys, shards = [f"{i:06d}" for i in range(n)], [f"{i % 3:05d}" for i in range(n)]
    defect = rng.choice(["unsafe", "watermark", None, None, None], size=n)
    # Scores rounded to two places: many ties. Unsafe samples score higher on average.
    punsafe = np.round(np.clip(rng.normal(0.3, 0.2, n) + 0.3 * (defect == "unsafe"), 0, 1), 2)
    punsafe_in_pool = [None if i % 50 == 0 else float(v) for i, v in enumerate(punsafe)]  # a few missing: 0
    scores = pa.table({
        "key": keys, "shard": shards, "similarity": rng.random(n), "punsafe": punsafe_in_pool,
        "pwatermark": rng.random(n), "toxicity": rng.random(n), "language": ["en"] * n,
        "language_score": rng.random(n), "caption_words": rng.integers(0, 10, n), "caption_chars": [20] * n,
        "min_side": rng.integers(50, 500, n), "aspect_ratio": rng.random(n) * 4})
    connection = duckdb.connect()
    connection.register("scores", scores)
    connection.register("duplicates", pa.table({"key": keys, "shard": shards, "is_duplicate": [False] * n}))
    connection.register("subset_members", pa.table({"policy": ["safe"], "key": [keys[0]], "shard": [shards[0]]}))
    pq.write_table(pa.table({"key": keys, "shard": shards, "defect": pa.array(defect.tolist(), pa.string())}),
                   tmp_path / "truth.parquet")
    result = evaluate(Catalog(connection=connection), read_truth(str(tmp_path / "truth.parquet")),
                      load_policies(), {})
    nsfw = next(f for f in result["filters"] if f["filter"] == "nsfw")
    badness = np.array([0.0 if v is None else v for v in punsafe_in_pool])
    positive = defect == "unsafe"
    flagged = badness >= nsfw["threshold"]
    assert nsfw["samples"] == n and nsfw["prevalence"] == pytest.approx(positive.mean())
    assert nsfw["auroc"] == pytest.approx(_brute_auroc(badness, positive), abs=1e-12)
    assert nsfw["precision"] == pytest.approx((flagged & positive).sum() / flagged.sum())
    assert nsfw["recall"] == pytest.approx((flagged & positive).sum() / positive.sum())
    assert nsfw["fpr"] == pytest.approx((flagged & ~positive).sum() / (~positive).sum())
    clean = np.array([d is None for d in defect])
    assert nsfw["fpr_clean"] == pytest.approx((flagged & clean).sum() / clean.sum())
    assert result["policies"]["safe"]["crawl_rows"]["unsafe"] == positive.sum()
