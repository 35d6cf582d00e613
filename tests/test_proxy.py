"""The downstream proxy (assets/downstream_proxy.py): a small CLIP trained from scratch on each
subset, repeats as drawn, measured by zero-shot accuracy on held-out scenes."""

import json

import numpy as np
import pyarrow as pa
import pytest

from assets.downstream_proxy import (
    RANDOM_HALF,
    PoolPixels,
    ProxySettings,
    proxy_subsets,
    random_half,
    register_architecture,
)
from assets.flyt.downstream import HELDOUT_SEED
from tests.conftest import run_cli


def test_the_random_half_is_half_the_pool_once_each_and_seeded():
    pool = pa.table({"key": [f"{i:04d}" for i in range(11)], "shard": ["00000"] * 11})
    half = random_half(pool, seed=3)
    assert half.num_rows == 5 and half.column("draws").to_pylist() == [1] * 5
    assert half.equals(random_half(pool, seed=3)) and not half.equals(random_half(pool, seed=4))


def test_subsets_come_with_their_draws_and_a_member_trains_as_often_as_drawn(catalog, lake, materialized):
    import open_clip

    subsets = proxy_subsets(catalog, ["similarity_scs", "safe", RANDOM_HALF])
    assert set(subsets) == {"similarity_scs", "safe", RANDOM_HALF}
    sampled = subsets["similarity_scs"]
    with pytest.raises(ValueError, match="no materialized subset for \\['nope'\\]"):
        proxy_subsets(catalog, ["nope"])
    from resources.crawl import CrawlResource

    few = sampled.sort_by([("draws", "descending")]).slice(0, 3)
    name = register_architecture(ProxySettings().model_config)
    _, _, preprocess = open_clip.create_model_and_transforms(name)
    pool = PoolPixels(lake, CrawlResource(root=str(materialized["crawl"])), few, preprocess,
                      open_clip.get_tokenizer(name))
    rows = pool.rows(few)
    assert len(rows) == sum(few.column("draws").to_pylist()) and pool.pixels.shape[0] == 3
    assert sorted(np.bincount(rows).tolist()) == sorted(few.column("draws").to_pylist())


def test_the_proxy_command_trains_every_chosen_subset_per_seed_and_prints_the_table(materialized, tmp_path):
    heldout = tmp_path / "heldout.parquet"
    run_cli("downstream-data", str(heldout), "--samples", "40", "--seed", str(HELDOUT_SEED))
    result = run_cli("proxy", "--lake", str(materialized["lake"]), "--crawl", str(materialized["crawl"]),
                     "--policies", f"safe,{RANDOM_HALF}", "--steps", "3", "--batch", "16", "--seeds", "0,1",
                     "--heldout", str(heldout), "--json-out", str(tmp_path / "proxy.json"))
    assert "| policy | members | draws | accuracy |" in result.stdout
    written = json.loads((tmp_path / "proxy.json").read_text())
    assert written["heldout_images"] == 40 and written["steps"] == 3 and written["seeds"] == [0, 1]
    assert written["lr"] == ProxySettings().lr  # what is not given is the proxy's default
    by_policy = {s["policy"]: s for s in written["subsets"]}
    assert set(by_policy) == {"safe", RANDOM_HALF}
    for subset in by_policy.values():
        assert len(subset["accuracies"]) == 2 and all(0 <= a <= 1 for a in subset["accuracies"])
    assert by_policy[RANDOM_HALF]["members"] == by_policy[RANDOM_HALF]["draws"]
