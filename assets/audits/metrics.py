"""<policy>_audit: what a policy kept and removed, before (the scored pool) vs after.

metrics.json holds (queries in sql/audits/, formulas in assets/audits/formulas.py):
    crawl            rows, usable images, failed downloads, corrupt and missing images
    rates            NSFW (punsafe > 0.5, > 0.9), watermark (pwatermark > 0.8), toxic captions
                     (toxicity > 0.5, with a Wilson 95% interval), exact / near / phash
                     duplicate rates, English share, mean similarity
    distributions    language shares; caption length and similarity quantiles; MetaCLIP
                     concept coverage (entries never matched, top-10 entries' share, entropy)
    representation   caption groups (scores.caption_group, from scores/caption_terms): count
                     and share before vs after, removal rate and its ratio to the overall rate
    retrieval_bias   MaxSkew@k and NDKL of caption groups in the index's top k for neutral
                     prompts (resources/terms/neutral_prompts.txt), target = the subset's shares
    association      WEAT effect size and permutation p-value, in the text space (group words
                     vs attribute words) and cross-modally (members' images by caption group
                     vs attribute words); word sets in resources/terms/association.json
report.html renders them with plots; the asset's metadata carries a summary table.
"""

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from assets.audits import formulas
from assets.audits.report import render_report
from assets.embeddings import encode_texts
from assets.index_vectors import MemberVectors
from assets.scores.caption_terms import METADATA_PATH, entries
from resources.catalog import Catalog, read_sql
from resources.clip_model import LoadedClip
from resources.curation_files import TERMS_DIR
from resources.indexing import read_index
from resources.lake import LakeResource, audit_dir, index_dir

CODE_VERSION = "3"
RETRIEVAL_K = 50
WEAT_SAMPLE = 500  # members per group in the cross-modal test


def _side_rows(table: pa.Table) -> dict[str, dict[str, Any]]:
    return {row.pop("side"): row for row in table.to_pylist()}


def concept_coverage(rows: list[dict], total_entries: int) -> dict[str, Any]:
    counts = sorted((r["matches"] for r in rows), reverse=True)
    matches = sum(counts)
    return {
        "entries": total_entries,
        "entries_with_zero_matches": total_entries - len(counts),
        "top10_entries_share": sum(counts[:10]) / matches if matches else 0.0,
        "entropy_bits": formulas.entropy_bits(counts),
    }


def representation(counts: pa.Table, before_total: int, after_total: int) -> dict[str, Any]:
    before, after = {}, {}
    for row in counts.to_pylist():
        (before if row["side"] == "before" else after)[row["group_name"]] = row["samples"]
    ratios = formulas.removal_ratios(before, after, before_total, after_total)
    groups = {}
    for group in sorted(before):
        groups[group] = {
            "before": before[group],
            "after": after.get(group, 0),
            "share_before": before[group] / sum(before.values()),
            "share_after": after.get(group, 0) / sum(after.values()) if after else 0.0,
            "removal_rate": 1 - after.get(group, 0) / before[group],
            "removal_ratio": ratios[group],
        }
    present = [g["removal_ratio"] for g in groups.values() if g["removal_ratio"] is not None]
    return {"groups": groups, "max_removal_ratio": max(present) if present else None}


def retrieval_bias(prompts: list[str], retrieved: list[list[str]], target: dict[str, float],
                   k: int = RETRIEVAL_K) -> dict[str, Any]:
    """MaxSkew@k and NDKL per prompt over the first k retrieved members that carry a caption
    group (`retrieved`: each prompt's groups in rank order; `target`: each group's share)."""
    per_prompt = []
    for prompt, groups in zip(prompts, retrieved):
        ranked = groups[:k]
        if not ranked:
            continue
        per_prompt.append({"prompt": prompt, "results": len(ranked), "skews": formulas.skews(ranked, target),
                           "max_skew": formulas.max_skew(ranked, target), "ndkl": formulas.ndkl(ranked, target)})
    return {
        "k": k,
        "target": target,
        "prompts": per_prompt,
        "mean_max_skew": float(np.mean([p["max_skew"] for p in per_prompt])) if per_prompt else None,
        "mean_ndkl": float(np.mean([p["ndkl"] for p in per_prompt])) if per_prompt else None,
    }


def _retrieved_groups(catalog: Catalog, clip: LoadedClip, index, index_keys: pa.Table, prompts: list[str],
                      k: int) -> list[list[str]]:
    """Each prompt's retrieved members' caption groups, in rank order. Only the retrieved
    members' groups are looked up (sql/audits/retrieved_groups.sql), not the subset's."""
    if index.ntotal == 0:
        return [[] for _ in prompts]
    # Retrieve deep enough to find k grouped members, as people-image benchmarks hold only people.
    depth = min(index.ntotal, max(k * 20, 500))
    _, rows = index.search(np.ascontiguousarray(_encoded(clip, tuple(prompts))), depth)
    found = index_keys.select(["shard", "key"]).take(pa.array(np.unique(rows[rows >= 0])))
    catalog.connection.register("retrieved", found)
    try:
        labelled = catalog.query(read_sql("audits/retrieved_groups.sql"))
    finally:
        catalog.connection.unregister("retrieved")
    group_of = dict(zip(zip(labelled.column("shard").to_pylist(), labelled.column("key").to_pylist()),
                        labelled.column("group_name").to_pylist()))
    shards, keys = index_keys.column("shard"), index_keys.column("key")
    return [[group for row in ranked if row >= 0
             and (group := group_of.get((shards[int(row)].as_py(), keys[int(row)].as_py()))) is not None]
            for ranked in rows]


@lru_cache(maxsize=32)
def _encoded(clip: LoadedClip, texts: tuple[str, ...]) -> np.ndarray:
    """Fixed texts (neutral prompts, WEAT words) are encoded once per model and process, not
    once per policy's audit."""
    vectors = encode_texts(clip, list(texts), 64)
    vectors.flags.writeable = False  # shared between callers
    return vectors


def _templated(clip: LoadedClip, words: list[str], templates: list[str]) -> np.ndarray:
    return _encoded(clip, tuple(t.format(w) for w in words for t in templates))


def association(clip: LoadedClip, spec: dict, member_images: dict[str, np.ndarray]) -> dict[str, Any]:
    """WEAT in the text space and cross-modally (images of each caption group vs attribute words)."""
    a = _templated(clip, spec["attributes"]["a"], spec["attribute_templates"])
    b = _templated(clip, spec["attributes"]["b"], spec["attribute_templates"])
    x = _templated(clip, spec["targets"]["x"], spec["target_templates"])
    y = _templated(clip, spec["targets"]["y"], spec["target_templates"])
    words = {"x": spec["targets"]["x"], "y": spec["targets"]["y"], "a": spec["attributes"]["a"],
             "b": spec["attributes"]["b"]}
    result: dict[str, Any] = {"words": words, "text": formulas.weat(x, y, a, b)}
    gx, gy = spec["image_group"]["x"], spec["image_group"]["y"]
    if len(member_images.get(gx, [])) >= 2 and len(member_images.get(gy, [])) >= 2:
        result["cross_modal"] = {**formulas.weat(member_images[gx], member_images[gy], a, b),
                                 "image_groups": {"x": gx, "y": gy}}
    return result


def _create_side_views(catalog: Catalog, policy: str) -> None:
    """The temp views every audit query reads: audit_sides (the pool and the policy's
    members) and audit_sample_groups (their caption groups)."""
    catalog.connection.execute("SET VARIABLE policy = ?", [policy])
    catalog.connection.execute(read_sql("audits/sides.sql"))
    catalog.connection.execute(read_sql("audits/sample_groups.sql"))


def _rates_and_representation(catalog: Catalog) -> dict[str, Any]:
    rates = _side_rows(catalog.query(read_sql("audits/rates.sql")))
    empty = {"samples": 0, "draws": 0, "toxic": 0}
    before, after = rates.get("before", empty), rates.get("after", empty)
    for side in (before, after):  # toxic counts draws (sql/audits/rates.sql), so the interval does too
        side["toxic_rate_ci95"] = list(formulas.wilson_interval(side.get("toxic", 0), side["draws"]))
    return {"before": before, "after": after,
            "representation": representation(catalog.query(read_sql("audits/group_counts.sql")),
                                             before["samples"], after["samples"])}


def before_after_figures(catalog: Catalog, policy: str) -> dict[str, Any]:
    """Rates before and after one policy, and the representation of caption groups: what the
    subset's blocking checks need, without the rest of the audit."""
    _create_side_views(catalog, policy)
    return _rates_and_representation(catalog)


def _table_metrics(catalog: Catalog, policy: str, entries_path: str) -> dict[str, Any]:
    """The figures the SQL in sql/audits/ gives, read through the side views."""
    crawl = catalog.query(read_sql("audits/crawl.sql")).to_pylist()[0]
    figures = _rates_and_representation(catalog)
    before, after = figures["before"], figures["after"]
    languages: dict[str, dict[str, float]] = {"before": {}, "after": {}}
    for row in catalog.query(read_sql("audits/languages.sql")).to_pylist():
        languages[row["side"]][row["language"]] = row["share"]
    quantiles = _side_rows(catalog.query(read_sql("audits/quantiles.sql")))
    concept_rows = catalog.query(read_sql("audits/concepts.sql")).to_pylist()
    total_entries = len(entries(entries_path))
    concepts = {side: concept_coverage([r for r in concept_rows if r["side"] == side], total_entries)
                for side in ("before", "after")}
    return {
        "policy": policy,
        "crawl": crawl,
        "before": before,
        "after": after,
        "removed": before["samples"] - after["samples"],
        "kept_share": after["samples"] / before["samples"] if before["samples"] else 0.0,
        "languages": languages,
        "distributions": {"quantiles": [0.1, 0.25, 0.5, 0.75, 0.9], "before": quantiles.get("before", {}),
                          "after": quantiles.get("after", {}), "concepts": concepts},
        "representation": figures["representation"],
    }


def audit_metrics(catalog: Catalog, policy: str, lake: LakeResource | None = None, model_id: str | None = None,
                  clip: LoadedClip | None = None, prompts_path: str = str(TERMS_DIR / "neutral_prompts.txt"),
                  association_path: str = str(TERMS_DIR / "association.json"),
                  entries_path: str = METADATA_PATH) -> dict[str, Any]:
    """Every audit figure of one policy's subset against the scored pool. With the lake,
    model and clip given, also the retrieval-bias audit over its index (with the neutral
    prompts in `prompts_path`) and the association test (word sets in `association_path`)."""
    _create_side_views(catalog, policy)
    metrics = _table_metrics(catalog, policy, entries_path)
    if lake is None or model_id is None or clip is None:
        return metrics
    shares = catalog.query(read_sql("audits/group_shares.sql"))
    total = sum(shares.column("members").to_pylist())
    target = {g: n / total for g, n in zip(shares.column("group_name").to_pylist(),
                                           shares.column("members").to_pylist())}
    index, index_keys = read_index(lake, index_dir(policy, model_id))
    prompts = [line.strip() for line in Path(prompts_path).read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    if target:
        retrieved = _retrieved_groups(catalog, clip, index, index_keys, prompts, RETRIEVAL_K)
        metrics["retrieval_bias"] = retrieval_bias(prompts, retrieved, target)
    else:
        metrics["retrieval_bias"] = {"k": RETRIEVAL_K, "prompts": [], "mean_max_skew": None, "mean_ndkl": None}
    sample = catalog.query(read_sql("audits/weat_sample.sql"), {"per_group": WEAT_SAMPLE})
    metrics["association"] = association(clip, json.loads(Path(association_path).read_text()),
                                         _group_images(lake, model_id, sample))
    return metrics


def _group_images(lake: LakeResource, model_id: str, sample: pa.Table) -> dict[str, np.ndarray]:
    """Image embeddings of the sampled members of each caption group (sql/audits/weat_sample.sql:
    at most WEAT_SAMPLE a group, so only that many vectors are read)."""
    source = MemberVectors(lake, model_id, sample.select(["key", "shard"]))
    vectors = np.empty((source.count, source.dim), np.float32)
    for positions, chunk in source.chunks():
        vectors[positions] = chunk
    # The source orders members by shard, then as given: find each sampled member's place.
    order = source.keys()
    place = {pair: i for i, pair in enumerate(zip(order.column("shard").to_pylist(), order.column("key").to_pylist()))}
    groups = sample.column("group_name").to_pylist()
    pairs = list(zip(sample.column("shard").to_pylist(), sample.column("key").to_pylist()))
    return {group: vectors[[place[pair] for pair, g in zip(pairs, groups) if g == group]]
            for group in sorted(set(groups))}


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


RATE_ROWS = ("samples", "draws", "nsfw_rate", "nsfw_rate_p90", "watermark_rate", "toxic_rate", "exact_duplicate_rate",
             "near_duplicate_rate", "english_rate", "mean_similarity")


def markdown_table(metrics: dict[str, Any]) -> str:
    """Before-vs-after table of the headline figures, for the Dagster UI."""
    lines = ["| metric | before | after |", "|---|---|---|"]
    for name in RATE_ROWS:
        lines.append(f"| {name} | {_cell(metrics['before'].get(name))} | {_cell(metrics['after'].get(name))} |")
    for group, figures in metrics["representation"]["groups"].items():
        lines.append(f"| share of '{group}' captions | {figures['share_before']:.4f} | {figures['share_after']:.4f} |")
    for language, share in sorted(metrics["languages"]["before"].items(), key=lambda kv: -kv[1])[:5]:
        after = metrics["languages"]["after"].get(language, 0.0)
        lines.append(f"| language {language} | {share:.4f} | {after:.4f} |")
    lines.append(f"| max group removal ratio | | {_cell(metrics['representation']['max_removal_ratio'])} |")
    if "retrieval_bias" in metrics:
        lines.append(f"| mean MaxSkew@{metrics['retrieval_bias']['k']} | | "
                     f"{_cell(metrics['retrieval_bias']['mean_max_skew'])} |")
        for space, result in metrics["association"].items():
            if space != "words":
                lines.append(f"| WEAT {space} d (p) | | {result['effect_size']:.3f} ({result['p_value']:.4f}) |")
    return "\n".join(lines)


def write_audit(lake: LakeResource, policy: str, metrics: dict[str, Any]) -> tuple[str, str]:
    """Write the policy's metrics.json and report.html; their lake paths."""
    folder = audit_dir(policy)
    lake.write_json(f"{folder}/metrics.json", metrics)
    lake.write_bytes(f"{folder}/report.html", render_report(metrics).encode())
    return f"{folder}/metrics.json", f"{folder}/report.html"
