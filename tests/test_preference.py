"""Preference pairs (CLIP-DPO): candidates, the rules, the export, explain, and the targets on
the sample crawl with the demo model."""

import json
import shutil
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from assets.preference.candidates import CANDIDATE_SCHEMA, gather, score, token_count, write_candidates
from assets.preference.evaluation import evaluate_preference
from assets.preference.pairs import rank_and_pair
from resources.clip_model import DEMO_CHECKPOINT, ClipModelResource
from resources.crawl import CrawlResource
from resources.lake import LakeResource, preference_dir
from resources.preference import PreferenceResource, calibrated_rules
from tests.conftest import run_cli

RULES = PreferenceResource().rules(calibrated_rules(DEMO_CHECKPOINT))
MODEL_ID = ClipModelResource().model_id


def _shard_files(lake: LakeResource, shard: str, name: str) -> pa.Table:
    return lake.read_parquet(f"{preference_dir(shard, MODEL_ID)}/{name}.parquet")


def test_pairs_meet_the_targets_on_the_sample_crawl(materialized, catalog):
    crawl = materialized["crawl"]
    result = evaluate_preference(catalog, ds.dataset(str(crawl / "ground_truth.parquet")),
                                 ds.dataset(str(crawl / "candidate_truth.parquet")), RULES)
    pairs = result["pairs"]
    assert pairs["pairs"] >= 600 and pairs["images"] >= 200, pairs
    assert pairs["chosen_true_share"] >= 0.95, pairs
    assert pairs["chosen_without_truth"] == 0
    assert pairs["below_margin"] == 0
    assert pairs["dangling_images"] == 0 and pairs["dangling_captions"] == 0
    # The rendered-text scenes (signs and watermarks) are found by the demo text-in-image head.
    text = result["text_in_image"]
    assert text["positives"] >= 100
    assert text["auroc"] >= 0.95 and text["recall"] >= 0.9 and text["fpr"] <= 0.1, text


def test_every_candidate_is_paired_or_dropped_with_a_reason(lake):
    for shard in ("00000", "00003"):
        candidates = _shard_files(lake, shard, "candidates").to_pylist()
        pairs = _shard_files(lake, shard, "pairs").to_pylist()
        dropped = _shard_files(lake, shard, "dropped").to_pylist()
        stopped = {d["key"] for d in dropped if d["candidate"] is None}
        in_pairs = {(p["key"], p["chosen"]) for p in pairs} | {(p["key"], p["rejected"]) for p in pairs}
        left_out = {(d["key"], d["candidate"]) for d in dropped if d["candidate"] is not None}
        for c in candidates:
            assert c["key"] in stopped or (c["key"], c["candidate"]) in in_pairs | left_out, c
        assert {d["reason"] for d in dropped} <= {
            "text_in_image", "fewer_than_two_candidates", "best_below_min_similarity", "best_not_ahead",
            "within_margin_of_best", "over_max_pairs", "over_token_limit", "no_text_in_image_score"}
        best: dict[str, float] = {}
        for c in candidates:
            if c["similarity"] is not None:
                best[c["key"]] = max(best.get(c["key"], -1.0), c["similarity"])
        per_image: dict[str, int] = {}
        for p in pairs:
            assert p["key"] not in stopped
            assert p["margin"] >= RULES["min_margin"] - 1e-6
            assert p["chosen_similarity"] == pytest.approx(best[p["key"]])  # best_vs_rest: the best is chosen
            assert p["ptext"] <= RULES["max_ptext"]
            per_image[p["key"]] = per_image.get(p["key"], 0) + 1
        assert max(per_image.values()) <= RULES["max_pairs"]


def test_explain_shows_a_pairs_reasons(materialized, catalog):
    lake = str(materialized["lake"])
    paired = catalog.query("SELECT key FROM preference_pairs ORDER BY key LIMIT 1").column("key")[0].as_py()
    shown = json.loads(run_cli("explain", "--lake", lake, paired, env=materialized["env"]).stdout)["preference"]
    assert shown["pairs"] and not shown["dropped_by"]
    outcomes = {c["candidate"]: c["outcome"] for c in shown["candidates"]}
    assert outcomes[shown["pairs"][0]["chosen"]] == "chosen"
    assert all(outcomes[p["rejected"]] == "rejected" for p in shown["pairs"])
    texty = catalog.query("SELECT key FROM preference_dropped WHERE reason = 'text_in_image' ORDER BY key LIMIT 1")
    key = texty.column("key")[0].as_py()
    shown = json.loads(run_cli("explain", "--lake", lake, key, env=materialized["env"]).stdout)["preference"]
    assert not shown["pairs"] and shown["dropped_by"][0]["reason"] == "text_in_image"


def test_export_pairs_in_trls_format_with_the_images(materialized, catalog, tmp_path):
    out = tmp_path / "pairs"
    run_cli("export-pairs", "--lake", str(materialized["lake"]), "--out", str(out),
            "--crawl", str(materialized["crawl"]), "--samples-per-shard", "500", env=materialized["env"])
    rows = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert len(rows) == catalog.query("SELECT count(*) AS n FROM preference_pairs").column("n")[0].as_py()
    assert pq.read_table(out / "pairs.parquet").num_rows == len(rows)
    first = rows[0]
    assert {"prompt", "chosen", "rejected", "images"} <= set(first) and first["chosen"] != first["rejected"]
    assert first["images"][0]["key"] == first["key"] and first["margin"] >= RULES["min_margin"] - 1e-6
    crawl = CrawlResource(root=str(materialized["crawl"]))
    original = dict(crawl.iter_tar(first["shard"], wanted={first["images"][0]["tar_member"]}))
    tars = sorted(out.glob("*.tar"))
    assert len(tars) == -(-len(rows) // 500)
    with tarfile.open(tars[0]) as tar:
        stem = f"{first['key']}_{first['pair']}"
        assert tar.extractfile(f"{stem}.jpg").read() == original[first["images"][0]["tar_member"]]
        assert json.loads(tar.extractfile(f"{stem}.json").read())["chosen"] == first["chosen"]


def _candidates(rows: list[tuple[str, int, float | None, bool]]) -> pa.Table:
    return pa.Table.from_pylist([
        {"key": key, "shard": "00000", "candidate_id": i, "candidate": f"{key} caption {i}", "sources": "captioner",
         "tokens": 40 if over else 10, "over_token_limit": over, "similarity": similarity}
        for key, i, similarity, over in rows], schema=CANDIDATE_SCHEMA)


def test_the_rules_each_stop_what_they_name():
    candidates = _candidates([
        ("clear", 0, 0.90, False), ("clear", 1, 0.80, False), ("clear", 2, 0.50, False), ("clear", 3, 0.88, True),
        ("close", 0, 0.90, False), ("close", 1, 0.87, False), ("close", 2, 0.40, False),
        ("texty", 0, 0.90, False), ("texty", 1, 0.40, False),
        ("low", 0, 0.45, False), ("low", 1, 0.10, False),
        ("alone", 0, 0.90, False), ("alone", 1, 0.89, True),
    ])
    images = pa.table({"key": ["clear", "close", "texty", "low", "alone"], "ptext": [0.1, 0.1, 0.9, 0.1, 0.1]})
    rules = {"min_similarity": 0.5, "min_margin": 0.05, "min_lead": 0.05, "max_ptext": 0.5,
             "pairing": "best_vs_rest", "max_pairs": 3}
    result = rank_and_pair(candidates, images, rules, context_length=32)
    pairs = result.pairs.to_pylist()
    assert [(p["key"], p["chosen"], p["rejected"]) for p in pairs] == [
        ("clear", "clear caption 0", "clear caption 2", ), ("clear", "clear caption 0", "clear caption 1")]
    assert [p["pair"] for p in pairs] == [1, 2]  # largest margin first
    reasons = {(d["key"], d["candidate"]): d["reason"] for d in result.dropped.to_pylist()}
    assert reasons == {("close", None): "best_not_ahead", ("texty", None): "text_in_image",
                       ("low", None): "best_below_min_similarity", ("alone", None): "fewer_than_two_candidates",
                       ("clear", "clear caption 3"): "over_token_limit",
                       ("alone", "alone caption 1"): "over_token_limit"}
    # One pair per image: best vs worst.
    worst = rank_and_pair(candidates, images, {**rules, "max_pairs": 1}, 32).pairs.to_pylist()
    assert [(p["chosen"], p["rejected"]) for p in worst] == [("clear caption 0", "clear caption 2")]
    over = rank_and_pair(candidates, images, {**rules, "max_pairs": 1}, 32).dropped.to_pylist()
    assert {(d["candidate"], d["reason"]) for d in over if d["key"] == "clear" and d["candidate"]} == {
        ("clear caption 1", "over_max_pairs"), ("clear caption 3", "over_token_limit")}
    # all_qualifying: a worse caption is chosen over one further below it.
    every = rank_and_pair(candidates, images, {**rules, "pairing": "all_qualifying"}, 32).pairs.to_pylist()
    assert {(p["chosen"], p["rejected"]) for p in every} == {
        ("clear caption 0", "clear caption 2"), ("clear caption 0", "clear caption 1"),
        ("clear caption 1", "clear caption 2")}
    # No lead rule: the close image pairs its best with the far one only (0.87 is within the margin).
    loose = rank_and_pair(candidates, images, {**rules, "min_lead": 0.0}, 32)
    assert [(p["chosen"], p["rejected"]) for p in loose.pairs.to_pylist() if p["key"] == "close"] == [
        ("close caption 0", "close caption 2")]
    assert ("close", "close caption 1", "within_margin_of_best") in {
        (d["key"], d["candidate"], d["reason"]) for d in loose.dropped.to_pylist()}


def test_candidates_are_gathered_deduplicated_and_hostile_rows_recorded():
    samples = pa.table({
        "key": ["a", "b", "c", "a"], "image_status": ["ok", "ok", "failed_to_download", "duplicate_key"],
        "caption": ["a red star", "  a blue ring  ", "a green cross", "ignored"],
        "generated": ["a red star", None, "x", "y"],
    })
    sidecar = pa.table({
        "key": ["a", "a", None, "b", "c", "zzz", "b"],
        "candidate": ["a red star", "a red square", "orphan", None, "a caption", "a caption", "   "],
        "source": ["captioner", None, "captioner", "captioner", "captioner", "captioner", "captioner"],
    })
    found, errors = gather(samples, {"a", "b"}, sidecar, ["generated"], "00000")
    assert found == {"a": {"a red star": ["alt_text", "generated", "captioner"], "a red square": ["candidates"]},
                     "b": {"a blue ring": ["alt_text"]}}
    reasons = [e["reason"] for e in errors]
    assert any("key is null" in r for r in reasons) and any("candidate is null" in r for r in reasons)
    assert "the image is not usable (image_status failed_to_download)" in reasons
    assert "key is not in the shard's samples" in reasons and "empty candidate" in reasons
    # A candidates file without its columns is recorded whole, and the alt-texts still count.
    found, errors = gather(samples, {"a", "b"}, pa.table({"id": [1], "text": ["x"]}), [], "00000")
    assert set(found) == {"a", "b"} and "no 'key' column" in errors[0]["reason"]
    # A shard without an extra column records it and goes on.
    found, errors = gather(samples, {"a"}, None, ["missing_column"], "00000")
    assert found == {"a": {"a red star": ["alt_text"]}}
    assert errors[0]["reason"] == "extra column 'missing_column' is not in 00000.parquet: no candidates from it"


def test_candidates_over_the_token_limit_are_kept_unembedded():
    clip = ClipModelResource().load()
    long = " ".join(["a very long red star caption"] * 10)
    found = {"k": {"a red star": ["alt_text"], long: ["captioner"]}}
    image = np.eye(1, 128, dtype=np.float32)
    table = score(found, "00000", ["k"], image, clip.tokenizer, 32, lambda texts: np.ones((len(texts), 128)))
    rows = table.to_pylist()
    assert rows[0]["tokens"] == int((clip.tokenizer(["a red star"]) != 0).sum()) == 5
    assert rows[1]["tokens"] == token_count(clip.tokenizer, long) > 32
    assert rows[1]["over_token_limit"] and rows[1]["similarity"] is None
    assert rows[0]["similarity"] == pytest.approx(1.0)


def test_an_unreadable_candidates_file_is_recorded_and_the_shard_goes_on(materialized, lake, tmp_path):
    crawl_copy, lake_copy = tmp_path / "crawl", tmp_path / "lake"
    crawl_copy.mkdir()
    for suffix in (".tar", ".parquet", "_stats.json"):
        shutil.copy(materialized["crawl"] / f"00001{suffix}", crawl_copy)
    (crawl_copy / "00001_candidates.parquet").write_bytes(b"PAR1 not really")
    shutil.copytree(materialized["lake"] / "shards" / "00001", lake_copy / "shards" / "00001",
                    ignore=shutil.ignore_patterns("preference"))
    crawl = CrawlResource(root=str(crawl_copy))
    result = write_candidates(crawl, LakeResource(root=str(lake_copy)), "00001", MODEL_ID,
                              ClipModelResource().load(), 64, [])
    assert "00001_candidates.parquet is not a readable parquet file" in result.errors.column("reason")[0].as_py()
    assert set(result.table.column("sources").to_pylist()) == {"alt_text"}
    assert result.table.num_rows == len(set(result.table.column("key").to_pylist())) > 200


def test_a_candidates_file_is_part_of_the_shards_fingerprint(materialized, tmp_path):
    for suffix in (".tar", ".parquet", "_stats.json"):
        shutil.copy(materialized["crawl"] / f"00002{suffix}", tmp_path)
    crawl = CrawlResource(root=str(tmp_path))
    without = crawl.fingerprint("00002")
    assert crawl.fingerprints() == {"00002": without}
    shutil.copy(materialized["crawl"] / "00002_candidates.parquet", tmp_path)
    assert crawl.fingerprint("00002") != without
    assert crawl.fingerprints() == {"00002": crawl.fingerprint("00002")}
