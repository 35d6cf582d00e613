"""Indices that can be searched and audits that can be believed, and checks that gate."""

import json
import math
import re
import shutil

import faiss
import numpy as np
import pytest
from dagster import AssetKey, DagsterInstance, materialize

from assets.audits import formulas
from assets.index_vectors import ArrayVectors
from assets.indices import build_index, choose_factory, exact_neighbours, exact_top, recall_at_k
from orchestration.definitions import build_definitions
from resources.clip_model import DEMO_CHECKPOINT, DEMO_MODEL, model_id
from resources.crawl import CrawlResource
from resources.indexing import IndexSettings, write_index
from resources.lake import LakeResource, index_dir
from tests.conftest import run_cli

MODEL_ID = model_id(DEMO_MODEL, DEMO_CHECKPOINT)


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_index_type_grows_with_the_set_and_shrinks_with_the_budget():
    assert choose_factory(5_000, 128, 2**30) == "Flat"
    assert choose_factory(200_000, 128, 2**30) == "HNSW32"
    assert choose_factory(3_000_000, 128, 2**31).startswith("IVF") and choose_factory(
        3_000_000, 128, 2**31).endswith(",Flat")
    assert choose_factory(3_000_000, 512, 2**31) == "IVF8192_HNSW32,SQ8"  # a byte a dimension
    assert choose_factory(5_000_000, 512, 2**31).split(",")[1].startswith("PQ")
    with pytest.raises(ValueError, match="do not fit"):
        choose_factory(10**9, 512, 2**20)


@pytest.mark.parametrize("budget_bytes, family", [(10 * 2**20, "HNSW32"), (int(3.5 * 2**20), "IVF")])
def test_approximate_index_recall_is_measured_against_exact_search(budget_bytes, family, tmp_path):
    rng = np.random.default_rng(0)
    vectors, queries = _unit(rng, 25_000, 32), _unit(rng, 200, 32)
    index, info = build_index(vectors, queries, IndexSettings(budget_bytes, 0.9, 200))
    assert info["factory"].startswith(family)
    # Recompute recall@10 by brute force, independently of the index module.
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    _, found = index.search(queries, 10)
    recomputed = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, found)])
    assert info["recall_at_10"] == pytest.approx(recomputed, abs=0.01)
    if family == "HNSW32":
        assert info["recall_at_10"] >= 0.9 and info["search_params"].startswith("efSearch")
    written = write_index(LakeResource(root=str(tmp_path)), "index", index, ArrayVectors(vectors).keys(), info)
    file = tmp_path / "index" / "versions" / written["version"] / "image.index"
    assert written["memory_bytes"] == faiss.serialize_index(index).nbytes == file.stat().st_size


def test_exact_scores_streamed_a_chunk_at_a_time_equal_one_exact_search():
    rng = np.random.default_rng(2)
    vectors, queries = _unit(rng, 5_000, 16), _unit(rng, 50, 16)

    class Chunked(ArrayVectors):  # chunks of 700: top-k merged across chunks
        def chunks(self, positions=None, size=700):
            return super().chunks(positions, size)

    streamed, rows = exact_top(Chunked(vectors), queries, 10)
    whole, whole_rows = exact_neighbours(vectors, queries, 10)
    assert np.allclose(streamed, whole, atol=1e-6)
    assert np.mean(rows == whole_rows) > 0.99  # the same neighbours (ties aside)


def test_recall_counts_ties_as_hits():
    vectors = np.repeat(_unit(np.random.default_rng(1), 5, 8), 3, axis=0)  # every vector three times
    index = faiss.IndexFlatIP(8)
    index.add(vectors)
    truth = index.search(vectors[:4], 3)
    assert recall_at_k(index, vectors[:4], truth, k=3) == 1.0


def test_demo_indices_record_their_figures(lake, materialized):
    info = lake.read_json(f"{index_dir('safe', MODEL_ID)}/index_info.json")
    assert {"factory", "memory_bytes", "build_seconds", "recall_at_10"} <= set(info)
    instance = DagsterInstance.from_config(str(materialized["home"]))
    event = instance.get_latest_materialization_event(AssetKey("safe_index"))
    metadata = event.asset_materialization.metadata
    assert metadata["factory"].value == info["factory"] and metadata["recall_at_10"].value == info["recall_at_10"]


def test_search_by_text_and_by_image_stays_in_the_subset(materialized, lake):
    members = set(lake.read_parquet("subsets/safe/members.parquet").column("key").to_pylist())
    out = run_cli("search", "--lake", str(materialized["lake"]), "--subset", "safe",
                  "a photo of a red circle on a blue background", "-k", "10", "--json")
    hits = json.loads(out.stdout)
    assert len(hits) == 10 and {h["key"] for h in hits} <= members
    # Few members are exactly a red circle on blue; the nearest are red things on blue.
    red_on_blue = re.compile(r"\bred \w+ (?:on|against) a (?:\w+ )?blue background")
    assert sum(bool(red_on_blue.search(h["caption"])) for h in hits) >= 5
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    text = run_cli("search", "--lake", str(materialized["lake"]), "--subset", "safe", "a blue star", "-k", "3")
    assert len(text.stdout.strip().splitlines()) == 3

    member = sorted(members)[0]
    shard = member[:5]
    crawl = CrawlResource(root=str(materialized["crawl"]))
    image = next(data for name, data in crawl.iter_tar(shard) if name == f"{member}.jpg")
    path = materialized["lake"].parent / "query.jpg"
    path.write_bytes(image)
    by_image = json.loads(run_cli("search", "--lake", str(materialized["lake"]), "--subset", "safe",
                                  "--image", str(path), "-k", "5", "--json").stdout)
    assert by_image[0]["key"] == member and by_image[0]["score"] == pytest.approx(1.0, abs=2e-3)


def test_audit_formulas_against_hand_computed_values():
    low, high = formulas.wilson_interval(5, 100)
    # p = .05, z = 1.96: (0.05 + 0.019208 +- 1.96 * sqrt(0.000475 + 0.0000960)) / 1.038416
    assert low == pytest.approx(0.021543, abs=1e-5) and high == pytest.approx(0.111750, abs=1e-5)
    assert formulas.wilson_interval(0, 0) == (0.0, 1.0)
    assert formulas.entropy_bits([1, 1, 1, 1]) == pytest.approx(2.0)
    target = {"a": 0.5, "b": 0.5}
    assert formulas.max_skew(["a", "a", "a", "b"], target) == pytest.approx(math.log(0.75 / 0.5), abs=1e-5)
    # NDKL of a ranking that is balanced from the second result on: only i = 1 and i = 3 differ from D*.
    kl1 = 1 * math.log(1 / 0.5)  # top-1 = [a]: all mass on a
    kl3 = (2 / 3) * math.log((2 / 3) / 0.5) + (1 / 3) * math.log((1 / 3) / 0.5)
    z = 1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    expected = (kl1 / math.log2(2) + kl3 / math.log2(4)) / z
    assert formulas.ndkl(["a", "b", "a"], target) == pytest.approx(expected, abs=1e-4)
    ratios = formulas.removal_ratios({"g": 10, "h": 10}, {"g": 5, "h": 9}, 20, 14)
    assert ratios["g"] == pytest.approx(0.5 / 0.3) and ratios["h"] == pytest.approx(0.1 / 0.3)


def test_weat_effect_size_and_permutation_p_value():
    a, b = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    x = np.array([[0.9, 0.1], [0.8, 0.2], [0.95, 0.05]])
    y = np.array([[0.1, 0.9], [0.2, 0.8], [0.05, 0.95]])
    s = np.concatenate([x @ a.T - x @ b.T, y @ a.T - y @ b.T]).ravel()
    result = formulas.weat(x, y, a, b, permutations=2000)
    assert result["effect_size"] == pytest.approx((s[:3].mean() - s[3:].mean()) / s.std(ddof=1))
    assert result["p_value"] == pytest.approx(1 / 20, abs=0.02)  # 1 of the 20 splits is as extreme
    assert formulas.weat(y, x, a, b)["effect_size"] < 0


def test_weat_p_value_is_the_permutation_test_written_as_a_loop():
    rng = np.random.default_rng(5)
    x, y, a, b = (rng.normal(size=(n, 8)) for n in (60, 50, 4, 4))
    x[:, 0] += 0.3  # a small effect, so the p-value is neither 0 nor 1
    s = np.concatenate([np.asarray(formulas._association(x, a, b)), np.asarray(formulas._association(y, a, b))])
    observed = s[:60].mean() - s[60:].mean()
    draws = np.random.default_rng(0)
    labels = np.arange(110) < 60
    extreme = 0
    for _ in range(500):
        shuffled = draws.permutation(labels)
        extreme += s[shuffled].mean() - s[~shuffled].mean() >= observed - 1e-12
    result = formulas.weat(x, y, a, b, permutations=500, seed=0)
    assert 0.01 < result["p_value"] < 0.99
    assert result["p_value"] == (extreme + 1) / 501


def test_the_planted_skew_is_detected(lake):
    metrics = lake.read_json("audits/laion400m/metrics.json")
    groups = metrics["representation"]["groups"]
    assert groups["woman"]["removal_ratio"] > 1.5 * groups["man"]["removal_ratio"]  # mismatched 3x as often
    bias = {p["prompt"]: p["skews"] for p in metrics["retrieval_bias"]["prompts"]}
    assert bias["a pink shape next to a person"]["woman"] > 0.3 > bias["a pink shape next to a person"]["man"]
    assert bias["a blue shape next to a person"]["man"] > 0 > bias["a blue shape next to a person"]["woman"]
    cross = metrics["association"]["cross_modal"]
    assert cross["image_groups"] == {"x": "woman", "y": "man"}
    assert cross["effect_size"] > 0.5 and cross["p_value"] < 0.01
    assert metrics["association"]["text"]["effect_size"] > 0
    assert metrics["before"]["toxic_rate_ci95"][0] <= metrics["before"]["toxic_rate"] <= \
        metrics["before"]["toxic_rate_ci95"][1]
    concepts = metrics["distributions"]["concepts"]["before"]
    assert 0 < concepts["entries_with_zero_matches"] < concepts["entries"] and concepts["entropy_bits"] > 1


def test_subset_checks_see_the_audits_figures(catalog):
    """The subset's blocking checks read before_after_figures; the audit reports audit_metrics. The
    two must agree, or a check would pass on figures the audit then contradicts."""
    from assets.audits.metrics import audit_metrics, before_after_figures

    for policy in ("safe", "laion400m"):
        figures, metrics = before_after_figures(catalog, policy), audit_metrics(catalog, policy)
        assert figures["after"]["samples"] > 0
        for part in ("before", "after", "representation"):
            assert figures[part] == metrics[part], (policy, part)


def test_report_is_one_self_contained_page(lake):
    page = lake.read_bytes("audits/safe/report.html").decode()
    assert page.count("<figure><svg") >= 5 and "<?xml" not in page
    # Nothing to fetch: every reference points inside the page (SVG namespace URIs are names).
    references = re.findall(r"""(?:src|href)=["']([^"']*)""", page)
    assert all(r.startswith("#") for r in references), [r for r in references if not r.startswith("#")]
    assert re.search(r"<text[^>]*>[^<]*nsfw_rate", page)  # labels stay text
    assert "Retrieval bias" in page and "WEAT" in page


def test_charts_are_well_formed_svg_with_round_ticks():
    import xml.etree.ElementTree as ElementTree

    from assets.audits import charts

    assert charts.nice_ticks(0.0, 0.07) == [0.0, 0.02, 0.04, 0.06, 0.08]
    assert charts.nice_ticks(-1.83, 0.86) == [-2.0, -1.0, 0.0, 1.0]
    assert charts.nice_ticks(40.0, 73.0) == [40.0, 50.0, 60.0, 70.0, 80.0]
    assert charts.nice_ticks(0.5, 0.5)[0] <= 0.5 <= charts.nice_ticks(0.5, 0.5)[-1]

    svg = "{http://www.w3.org/2000/svg}"
    bars = ElementTree.fromstring(charts.paired_bars("Rates", ["a<b", "c"], [0.1, 0.3], [0.2, 0.0]))
    heights = [float(r.get("height")) for r in bars.iter(f"{svg}rect") if r.get("width") != "10"]
    # In label order, before then after (legend swatches aside); heights are proportional.
    assert heights == pytest.approx([heights[0], 2 * heights[0], 3 * heights[0], 0.0], abs=0.11)
    assert "a<b" in [t.text for t in bars.iter(f"{svg}text")]  # escaped in the SVG, text again when parsed
    skew = ElementTree.fromstring(charts.horizontal_bars(["p1", "p2"], {"man": [0.5, -1.0], "woman": [-0.5, 1.0]},
                                                         "skew"))
    rects = [r for r in skew.iter(f"{svg}rect") if r.get("width") != "10"]
    widths = [float(r.get("width")) for r in rects]
    assert widths == pytest.approx([widths[0], 2 * widths[0], widths[0], 2 * widths[0]], abs=0.11)
    # A negative bar ends at the zero line, a positive one starts there.
    assert float(rects[1].get("x")) + widths[1] == pytest.approx(float(rects[0].get("x")), abs=0.11)
    line = ElementTree.fromstring(charts.lines("q", [0.1, 0.5, 0.9], {"before": [1.0, 2.0, 3.0]}, "quantile"))
    assert len(list(line.iter(f"{svg}circle"))) == 3


def test_a_failing_blocking_check_leaves_the_last_good_subset_in_place(tmp_path, materialized):
    """The candidate that fails is not committed (no materialization, members, uids and index
    unchanged), the index and audit are skipped, and export serves the last good subset."""
    lake_copy = tmp_path / "lake"
    shutil.copytree(materialized["lake"], lake_copy, ignore=shutil.ignore_patterns("_dagster"))
    good = {name: (lake_copy / name).read_bytes() for name in (
        "subsets/safe/members.parquet", f"indices/safe/{MODEL_ID}/index_info.json")}
    tight = tmp_path / "checks.toml"
    tight.write_text("[default]\nblocking = true\nmax_removal_ratio = 0.5\nmin_recall_at_10 = 0.9\n")
    defs = build_definitions(crawl=str(materialized["crawl"]), lake=str(lake_copy), checks=tight)
    selection = [AssetKey("safe_subset"), AssetKey("safe_index"), AssetKey("safe_audit")]
    with DagsterInstance.ephemeral() as instance:
        result = materialize(list(defs.assets), instance=instance, resources=defs.resources, selection=selection,
                             raise_on_error=False)
        assert not result.success
        evaluations = {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data
                       for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}
        assert not evaluations["group_removal_ratio"].passed and evaluations["group_removal_ratio"].metadata[
            "bound"].value == 0.5
        assert result.get_asset_materialization_events() == []  # the UI's latest is still the last good one
        assert not instance.fetch_materializations(AssetKey("safe_subset"), limit=1).records
    assert {name: (lake_copy / name).read_bytes() for name in good} == good
    rejected = list((lake_copy / "subsets" / "safe" / "versions").glob("*/checks.json"))
    assert any(not json.loads(p.read_text())["group_removal_ratio"]["passed"] for p in rejected)
    exported = run_cli("export", "--lake", str(lake_copy), "--subset", "safe", "--format", "uids",
                       "--out", str(tmp_path / "out"))
    assert exported.returncode == 0 and (tmp_path / "out" / "safe_uids.npy").exists()


def test_a_subset_is_committed_whole_and_readers_never_mix_versions(tmp_path, materialized):
    from assets.subsets import commit_subset
    from resources.lake import LakeResource, checks_path, committed_subset, members_path, uids_path

    copy = tmp_path / "lake"
    shutil.copytree(materialized["lake"], copy, ignore=shutil.ignore_patterns("_dagster"))
    lake = LakeResource(root=str(copy))
    record = committed_subset(lake, "safe")
    assert record["checks"] and all(c["passed"] for c in record["checks"].values())
    assert lake.exists(record["uids"]) and record["uids"] == uids_path("safe", record["version"])
    info = lake.read_json(f"{index_dir('safe', MODEL_ID)}/index_info.json")
    assert info["subset_version"] == record["version"]

    def export() -> object:
        return run_cli("export", "--lake", str(copy), "--subset", "safe", "--format", "uids", "--out",
                       str(tmp_path / "out"), check=False)

    # A run killed between a candidate's files and its commit: readers still see the old subset whole.
    lake.write_json(checks_path("safe", "killedcandidate"), {"nsfw_rate": {
        "passed": False, "blocking": True, "value": 0.9, "bound": 0.005, "kind": "max", "what": "x"}})
    assert export().returncode == 0 and committed_subset(lake, "safe")["version"] == record["version"]
    # A new subset committed, its index not rebuilt yet: search refuses rather than serve the old members.
    members = lake.read_parquet(members_path("safe")).slice(0, 10)
    commit_subset(lake, "safe", members, "newer", {**record, "version": "newer", "uids": uids_path("safe", "newer")},
                  lake.read_npy(record["uids"])[:10])
    stale = run_cli("search", "--lake", str(copy), "--subset", "safe", "a red circle", check=False)
    assert stale.returncode != 0 and "covers another version of the subset" in stale.stderr
    assert lake.exists(record["uids"])  # the version before the committed one is kept for readers still on it
    # A members file that carries no check results is not exportable.
    lake.write_parquet(members_path("safe"), members.replace_schema_metadata({}))
    refused = export()
    assert refused.returncode != 0 and "carries no check results" in refused.stderr
