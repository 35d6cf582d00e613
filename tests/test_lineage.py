"""Any sample's history and any subset's provenance, one command away."""

import json

import pyarrow.parquet as pq

from tests.conftest import run_cli


def _first(truth, defect):
    return next(r["key"] for r in truth if r["defect"] == defect)


def test_explain_names_the_clause_that_dropped_a_sample(materialized):
    truth = pq.read_table(materialized["crawl"] / "ground_truth.parquet").to_pylist()
    toxic = _first(truth, "toxic_caption")
    out = json.loads(run_cli("explain", "--lake", str(materialized["lake"]), toxic, env=materialized["env"]).stdout)
    assert out["key"] == toxic and out["tar_member"] == f"{toxic}.jpg" and out["url"].startswith("http")
    assert out["scores"]["toxicity"] > 0.5
    safe = out["policies"]["safe"]
    assert not safe["kept"] and any("toxicity < 0.5" in clause for clause in safe["dropped_by"])
    assert not any("punsafe" in clause for clause in safe["dropped_by"])  # only the failing clauses
    samples_run = out["materializations"]["samples"]
    assert samples_run["run_id"] and samples_run["path"].endswith(f"shards/{out['shard']}/samples.parquet")

    failed = _first(truth, "failed_download")
    out = json.loads(run_cli("explain", "--lake", str(materialized["lake"]), failed, env=materialized["env"]).stdout)
    assert "scores" not in out and out["image_status"] == "failed_to_download"
    assert "never scored" in out["policies"]["laion400m"]["dropped_by"][0]


def test_explain_says_kept_for_a_member(materialized):
    members = pq.read_table(materialized["lake"] / "subsets" / "safe" / "members.parquet")
    key = members.column("key")[0].as_py()
    out = json.loads(run_cli("explain", "--lake", str(materialized["lake"]), key, env=materialized["env"]).stdout)
    assert out["policies"]["safe"] == {"kept": True}


def test_lineage_of_a_subset(materialized):
    members = pq.read_table(materialized["lake"] / "subsets" / "laion400m" / "members.parquet")
    out = json.loads(run_cli("lineage", "--lake", str(materialized["lake"]), "--subset", "laion400m",
                             env=materialized["env"]).stdout)
    assert out["members"] == members.num_rows and sum(out["shards"].values()) == members.num_rows
    assert out["subsets"]["model_id"].startswith("clipsieve-demo__") and out["subsets"]["sql_hash"]
    assert out["indices"]["run_id"] and out["audits"]["run_id"]
