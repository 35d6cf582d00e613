"""evaluation: every filter and every policy measured against a crawl's ground truth.

For each filter: AUROC of its score for the defect it targets (against every other pooled
sample), and precision, recall and false-positive rate at the threshold the policies use,
with the prevalence (McDermott et al. 2024's advice for rare classes). `fpr_clean` is the
false-positive rate among clean samples only. For each policy: the share of each defect
class that survives and the share of clean samples wrongly dropped, over every crawl row.
For the NSFW and watermark scores, every kind of head that fits the model (the head file,
the zero-shot prompts) is measured the same way, whichever one the pipeline used.

Needs a ground-truth file (`key`, `shard`, `defect`), as the sample crawl writes.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from assets.scores.classifier_heads import Scorer, load_scorer
from assets.subsets import Policy, effective_params
from resources.catalog import Catalog, read_sql
from resources.clip_model import ClipModelResource
from resources.embedding_files import load_embeddings
from resources.heads import HeadChoice, HeadsResource
from resources.lake import LakeResource

CODE_VERSION = "2"
EVALUATION_PATH = "evaluation/metrics.json"


@dataclass(frozen=True)
class FilterSpec:
    name: str
    column: str
    keep: str  # how a policy keeps a sample: "at_least", "below" or "at_most" the threshold
    policy: str  # the policy whose parameter is the threshold
    parameter: str
    defects: tuple[str, ...]


FILTERS = (
    FilterSpec("clip_similarity", "similarity", "at_least", "laion400m", "min_similarity", ("mismatched_caption",)),
    FilterSpec("nsfw", "punsafe", "below", "safe", "max_punsafe", ("unsafe",)),
    FilterSpec("watermark", "pwatermark", "below", "safe", "max_pwatermark", ("watermark",)),
    FilterSpec("toxicity", "toxicity", "below", "safe", "max_toxicity", ("toxic_caption",)),
    FilterSpec("language", "english", "at_least", "laion2b_en", "language", ("non_english",)),
    FilterSpec("caption_words", "caption_words", "at_least", "datacomp_basic", "min_words", ("junk_caption",)),
    FilterSpec("min_side", "min_side", "at_least", "datacomp_basic", "min_side", ("small_image",)),
    FilterSpec("aspect_ratio", "aspect_ratio", "at_most", "datacomp_basic", "max_aspect_ratio", ("extreme_aspect",)),
    FilterSpec("near_duplicates", "duplicate", "below", "safe", "", ("exact_duplicate", "near_duplicate")),
)


def auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Probability that a positive outscores a negative (ties count half): Mann-Whitney U."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # Average ranks over ties.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _filter_scores(pool: pa.Table, spec: FilterSpec, threshold: Any) -> tuple[np.ndarray, np.ndarray]:
    """(badness score, flagged) per pooled sample: higher badness = more likely the defect."""
    if spec.column == "english":
        is_english = np.array([lang == "en" for lang in pool.column("language").to_pylist()])
        probability = np.nan_to_num(pool.column("language_score").to_numpy(zero_copy_only=False).astype(float))
        badness = 1 - np.where(is_english, probability, 0.0)
        return badness, ~is_english
    if spec.column == "duplicate":
        flagged = np.array([bool(d) for d in pool.column("is_duplicate").to_pylist()])
        return flagged.astype(float), flagged
    values = np.nan_to_num(pool.column(spec.column).to_numpy(zero_copy_only=False).astype(float))
    t = float(threshold)
    if spec.keep == "at_least":
        return -values, values < t
    if spec.keep == "below":
        return values, values >= t
    return values, values > t


def filter_metrics(pool: pa.Table, spec: FilterSpec, threshold: Any) -> dict[str, Any]:
    defects = pool.column("defect").to_pylist()
    positive = np.array([d in spec.defects for d in defects])
    clean = np.array([d is None for d in defects])
    badness, flagged = _filter_scores(pool, spec, threshold)
    true_positives = int((flagged & positive).sum())
    return {
        "filter": spec.name,
        "column": spec.column,
        "defects": list(spec.defects),
        "threshold": threshold if spec.parameter else "is_duplicate",
        "samples": int(len(pool)),
        "prevalence": float(positive.mean()) if len(pool) else 0.0,
        "auroc": auroc(badness, positive),
        "precision": true_positives / int(flagged.sum()) if flagged.any() else None,
        "recall": true_positives / int(positive.sum()) if positive.any() else None,
        "fpr": float((flagged & ~positive).sum() / max(1, (~positive).sum())),
        "fpr_clean": float((flagged & clean).sum() / max(1, clean.sum())),
    }


# The head filters measured per kind of head: the FILTERS entry each one is read like.
HEAD_FILTERS = {"nsfw": "nsfw", "watermark": "watermark"}
# What `evaluate` needs to measure each kind of head: a function adding one score column per
# kind to the pool, and the HeadChoice behind each column.
HeadKinds = tuple[Callable[[pa.Table], pa.Table], dict[str, HeadChoice]]


def head_pool_scores(lake: LakeResource, model_id: str, pool: pa.Table,
                     scorers: dict[str, Scorer]) -> pa.Table:
    """`pool` (key, shard, ...) with one column per scorer, named by its `scorers` key,
    computed from the shards' stored image embeddings."""
    parts = []
    for shard in sorted(set(pool.column("shard").to_pylist())):
        keys, image, _ = load_embeddings(lake, shard, model_id)
        parts.append(pa.table({"key": keys.column("key"), "shard": keys.column("shard"),
                               **{name: pa.array(scorer.predict(image) if len(image) else [], pa.float32())
                                  for name, scorer in scorers.items()}}))
    if not parts:  # an empty pool
        for name in scorers:
            pool = pool.append_column(name, pa.array([], pa.float32()))
        return pool
    return pool.join(pa.concat_tables(parts), keys=["key", "shard"], join_type="inner")


def compare_heads(pool: pa.Table, choices: dict[str, HeadChoice],
                  params: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The head filters' figures for every kind of head: `pool` carries a column per
    `choices` key (e.g. "nsfw/zero_shot"), read at the same threshold as the policy's."""
    specs = {spec.name: spec for spec in FILTERS}
    rows = []
    for column, choice in choices.items():
        spec = specs[HEAD_FILTERS[choice.name]]
        variant = FilterSpec(f"{spec.name} ({choice.kind})", column, spec.keep, spec.policy, spec.parameter,
                             spec.defects)
        rows.append({**filter_metrics(pool, variant, params.get(spec.policy, {}).get(spec.parameter)),
                     "head": choice.name, "kind": choice.kind, "source": choice.source})
    return rows


def evaluate(catalog: Catalog, truth: pa.Table, policies: list[Policy],
             calibration: dict[str, dict[str, object]], head_scores: HeadKinds | None = None) -> dict[str, Any]:
    """Filter and policy figures for the lake behind `catalog` against `truth`; with
    `head_scores` (see `head_kinds`), the head filters for each kind of head too (`heads`)."""
    connection = catalog.connection
    connection.register("truth", truth.select(["key", "shard", "defect"]))
    try:
        pool = catalog.query(read_sql("evaluation/pool.sql"))
        survival = catalog.query(read_sql("evaluation/survival.sql")).to_pylist()
    finally:
        connection.unregister("truth")
    params = {p.name: effective_params(p, calibration) for p in policies}
    filters = [filter_metrics(pool, spec, params.get(spec.policy, {}).get(spec.parameter)) for spec in FILTERS
               if spec.policy in params]
    by_policy: dict[str, dict[str, Any]] = {}
    for row in survival:
        entry = by_policy.setdefault(row["policy"], {"survives": {}, "crawl_rows": {}})
        entry["survives"][row["defect"]] = row["kept"] / row["crawl_rows"] if row["crawl_rows"] else None
        entry["crawl_rows"][row["defect"]] = row["crawl_rows"]
    for entry in by_policy.values():
        clean = entry["survives"].get("clean")
        entry["clean_dropped"] = None if clean is None else 1 - clean
    result: dict[str, Any] = {"filters": filters, "policies": by_policy}
    if head_scores is not None:
        score, choices = head_scores
        result["heads"] = compare_heads(score(pool), choices, params)
    return result


def head_kinds(lake: LakeResource, model_id: str, heads: HeadsResource, clip: ClipModelResource) -> HeadKinds:
    """The `head_scores` argument of `evaluate`: every kind of NSFW and watermark head that
    fits the model, scored from the lake's image embeddings."""
    choices = {f"{choice.name}/{choice.kind}": choice for name in HEAD_FILTERS
               for choice in heads.choices(name, clip.embedding_dim)}
    scorers = {column: load_scorer(choice, clip) for column, choice in choices.items()}
    return (lambda pool: head_pool_scores(lake, model_id, pool, scorers)), choices


def read_truth(path: str) -> pa.Table:
    """The ground truth (key, shard, defect) at `path`, with a clear error when there is none."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no ground truth at {path}: evaluation needs a crawl with planted "
                                "defects, such as the sample crawl")
    return pq.read_table(path)


def _number(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def format_tables(result: dict[str, Any]) -> str:
    """The evaluation as two markdown tables: filters, then policies."""
    lines = ["| filter | defects | threshold | prevalence | AUROC | precision | recall | FPR | FPR clean |",
             "|---|---|---|---|---|---|---|---|---|"]
    for f in result["filters"]:
        lines.append(f"| {f['filter']} | {', '.join(f['defects'])} | {_number(f['threshold'])} | "
                     f"{_number(f['prevalence'])} | {_number(f['auroc'])} | {_number(f['precision'])} | "
                     f"{_number(f['recall'])} | {_number(f['fpr'])} | {_number(f['fpr_clean'])} |")
    defects = sorted({d for p in result["policies"].values() for d in p["survives"]} - {"clean"})
    lines += ["", "Share of each class that survives the policy (clean dropped = 1 - clean survives):", "",
              "| policy | clean dropped | " + " | ".join(defects) + " |",
              "|---|---|" + "---|" * len(defects)]
    for name, p in sorted(result["policies"].items()):
        lines.append(f"| {name} | {_number(p['clean_dropped'])} | "
                     + " | ".join(_number(p["survives"].get(d)) for d in defects) + " |")
    if result.get("heads"):
        lines += ["", "Each kind of head that fits the model, at the policies' threshold:", "",
                  "| head | kind | defects | threshold | AUROC | precision | recall | FPR |",
                  "|---|---|---|---|---|---|---|---|"]
        for h in result["heads"]:
            lines.append(f"| {h['head']} | {h['kind']} | {', '.join(h['defects'])} | {_number(h['threshold'])} | "
                         f"{_number(h['auroc'])} | {_number(h['precision'])} | {_number(h['recall'])} | "
                         f"{_number(h['fpr'])} |")
    return "\n".join(lines)
