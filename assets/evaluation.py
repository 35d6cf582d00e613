"""evaluation: every filter and every policy measured against a crawl's ground truth.

For each filter: AUROC of its score for the defect it targets (against every other pooled
sample), and precision, recall and false-positive rate at the threshold the policies use,
with the prevalence (McDermott et al. 2024's advice for rare classes). `fpr_clean` is the
false-positive rate among clean samples only. For each policy: the share of each defect
class that survives and the share of clean samples wrongly dropped, over every crawl row.
For the NSFW and watermark scores, every kind of head that fits the model (the head file,
the zero-shot prompts) is measured the same way, whichever one the pipeline used. Once the
flyt group has run, the FLYT score is measured against every defect class (`flyt`); the
preference pairs and the text-in-image score are measured by assets/preference/evaluation.py.

Needs a ground-truth file (`key`, `shard`, `defect`), as the sample crawl writes.
"""

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from assets.preference.evaluation import format_number as _number
from assets.preference.evaluation import format_preference
from assets.scores.classifier_heads import Scorer, load_scorer
from assets.subsets import Policy, effective_params
from resources.catalog import Catalog, read_sql
from resources.clip_model import ClipModelResource
from resources.embedding_files import load_image_embeddings
from resources.heads import HeadChoice, HeadsResource
from resources.lake import LakeResource

CODE_VERSION = "3"
EVALUATION_PATH = "evaluation/metrics.json"


@dataclass(frozen=True)
class FilterSpec:
    name: str
    column: str
    policy: str  # the policy whose parameter is the threshold
    parameter: str
    defects: tuple[str, ...]


FILTERS = (
    FilterSpec("clip_similarity", "similarity", "laion400m", "min_similarity", ("mismatched_caption",)),
    FilterSpec("nsfw", "punsafe", "safe", "max_punsafe", ("unsafe",)),
    FilterSpec("watermark", "pwatermark", "safe", "max_pwatermark", ("watermark",)),
    FilterSpec("toxicity", "toxicity", "safe", "max_toxicity", ("toxic_caption",)),
    FilterSpec("language", "english", "laion2b_en", "language", ("non_english",)),
    FilterSpec("caption_words", "caption_words", "datacomp_basic", "min_words", ("junk_caption",)),
    FilterSpec("min_side", "min_side", "datacomp_basic", "min_side", ("small_image",)),
    FilterSpec("aspect_ratio", "aspect_ratio", "datacomp_basic", "max_aspect_ratio", ("extreme_aspect",)),
    FilterSpec("near_duplicates", "duplicate", "safe", "", ("exact_duplicate", "near_duplicate")),
)


# The head filters measured per kind of head: the FILTERS entry each one is read like.
HEAD_FILTERS = {"nsfw": "nsfw", "watermark": "watermark"}
# What `evaluate` needs to measure each kind of head: a function writing each kind's scores
# into a folder at each kind's threshold (see head_scores), and the HeadChoice behind each.
HeadKinds = tuple[Callable[[Catalog, str, dict[str, Any]], ds.Dataset], dict[str, HeadChoice]]
HEAD_SCHEMA = pa.schema([("filter", pa.string()), ("shard", pa.string()), ("key", pa.string()),
                         ("value", pa.float64()), ("threshold", pa.float64())])


def head_scores(lake: LakeResource, model_id: str, catalog: Catalog, predictors: dict[str, Scorer],
                thresholds: dict[str, Any], scratch: str) -> ds.Dataset:
    """Every kind of head's score of every pooled sample, from the shards' stored image
    embeddings, written a shard at a time into `scratch` (filter, shard, key, value,
    threshold; `predictors` and `thresholds` by kind); the files as one dataset."""
    shards = catalog.query(read_sql("evaluation/pool_shards.sql")).column("shard").to_pylist()
    for shard in shards:
        keys, image = load_image_embeddings(lake, shard, model_id)
        parts = []
        for name, predictor in predictors.items():
            threshold = thresholds.get(name)
            parts.append(pa.table({
                "filter": pa.array([name] * len(keys), pa.string()), "shard": keys.column("shard"),
                "key": keys.column("key"),
                "value": pa.array(predictor.predict(image) if len(image) else [], pa.float64()),
                "threshold": pa.array([None if threshold is None else float(threshold)] * len(keys), pa.float64()),
            }, schema=HEAD_SCHEMA))
        pq.write_table(pa.concat_tables(parts) if parts else HEAD_SCHEMA.empty_table(),
                       os.path.join(scratch, f"heads-{shard}.parquet"))
    if not shards:
        pq.write_table(HEAD_SCHEMA.empty_table(), os.path.join(scratch, "heads-none.parquet"))
    return ds.dataset(scratch, format="parquet", schema=HEAD_SCHEMA)


def _thresholds(params: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each filter's threshold: its policy's parameter (None when the policy is not loaded)."""
    return {spec.name: params.get(spec.policy, {}).get(spec.parameter) for spec in FILTERS if spec.parameter}


def evaluate(catalog: Catalog, truth: ds.Dataset, policies: list[Policy],
             calibration: dict[str, dict[str, object]], head_kinds: HeadKinds | None = None) -> dict[str, Any]:
    """Filter and policy figures for the lake behind `catalog` against `truth` (a dataset:
    DuckDB reads it a batch at a time); with `head_kinds` (see `head_kinds`), the head filters
    for each kind of head too (`heads`). Everything is computed by DuckDB over the files
    (sql/evaluation/): no per-sample value is held in Python."""
    connection = catalog.connection
    params = {p.name: effective_params(p, calibration) for p in policies}
    thresholds = _thresholds(params)
    choices = head_kinds[1] if head_kinds else {}
    specs = {spec.name: spec for spec in FILTERS}
    variants = {column: specs[HEAD_FILTERS[choice.name]] for column, choice in choices.items()}
    named = [(spec.name, spec) for spec in FILTERS] + list(variants.items())
    defects = pa.table({"filter": pa.array([name for name, spec in named for _ in spec.defects], pa.string()),
                        "defect": pa.array([d for _, spec in named for d in spec.defects], pa.string())})
    connection.register("truth", truth)
    connection.register("filter_defects", defects)
    try:
        with tempfile.TemporaryDirectory(prefix="clipsieve-evaluation-") as scratch:
            connection.execute(read_sql("evaluation/pool.sql"))
            kind_thresholds = {column: thresholds[spec.name] for column, spec in variants.items()}
            heads = head_kinds[0](catalog, scratch, kind_thresholds) if head_kinds else HEAD_SCHEMA.empty_table()
            connection.register("head_scores", heads)
            figures = catalog.query(read_sql("evaluation/filters.sql"), {
                "language": params.get("laion2b_en", {}).get("language"),
                **{spec.parameter: thresholds[spec.name] for spec in FILTERS if spec.parameter}}).to_pylist()
            connection.unregister("head_scores")
            # The FLYT score, once the flyt group has been materialized.
            learned = catalog.query(read_sql("evaluation/flyt.sql")) if catalog.has_view("flyt_scores") else None
        survival = catalog.query(read_sql("evaluation/survival.sql")).to_pylist()
    finally:
        connection.unregister("truth")
        connection.unregister("filter_defects")
    by_name = {row.pop("filter"): row for row in figures}
    filters = [{"filter": spec.name, "column": spec.column, "defects": list(spec.defects),
                "threshold": thresholds[spec.name] if spec.parameter else "is_duplicate", **by_name[spec.name]}
               for spec in FILTERS if spec.policy in params and spec.name in by_name]
    by_policy: dict[str, dict[str, Any]] = {}
    for row in survival:
        entry = by_policy.setdefault(row["policy"], {"survives": {}, "crawl_rows": {}})
        entry["survives"][row["defect"]] = row["kept"] / row["crawl_rows"] if row["crawl_rows"] else None
        entry["crawl_rows"][row["defect"]] = row["crawl_rows"]
    for entry in by_policy.values():
        clean = entry["survives"].get("clean")
        entry["clean_dropped"] = None if clean is None else 1 - clean
    result: dict[str, Any] = {"filters": filters, "policies": by_policy}
    if learned is not None:
        result["flyt"] = learned.to_pylist()
    if head_kinds is not None:
        result["heads"] = [{"filter": f"{variants[column].name} ({choice.kind})", "column": column,
                            "defects": list(variants[column].defects), "threshold": thresholds[variants[column].name],
                            **by_name.get(column, {}), "head": choice.name, "kind": choice.kind,
                            "source": choice.source} for column, choice in choices.items()]
    return result


def head_kinds(lake: LakeResource, model_id: str, heads: HeadsResource, clip: ClipModelResource) -> HeadKinds:
    """The `head_kinds` argument of `evaluate`: every kind of NSFW and watermark head that
    fits the model, scored from the lake's image embeddings."""
    choices = {f"{choice.name}/{choice.kind}": choice for name in HEAD_FILTERS
               for choice in heads.choices(name, clip.embedding_dim)}
    predictors = {column: load_scorer(choice, clip) for column, choice in choices.items()}
    return (lambda catalog, scratch, thresholds: head_scores(lake, model_id, catalog, predictors, thresholds,
                                                             scratch)), choices


def read_truth(path: str, filesystem: fsspec.AbstractFileSystem | None = None) -> ds.Dataset:
    """The ground truth (key, shard, defect) at `path` (a local path or URL, or a path on
    `filesystem`) as a dataset DuckDB scans, with a clear error when there is none."""
    if filesystem is None:
        filesystem, path = fsspec.core.url_to_fs(path)
    if not filesystem.exists(path):
        raise FileNotFoundError(f"no ground truth at {path}: evaluation needs a crawl with planted "
                                "defects, such as the sample crawl")
    return ds.dataset(path, format="parquet", filesystem=filesystem)


def format_tables(result: dict[str, Any]) -> str:
    """The evaluation as markdown tables: filters, policies, then what else was measured."""
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
    lines += format_preference(result.get("preference", {}))
    if result.get("flyt"):
        lines += ["", "The FLYT score against each defect class (AUROC of a low score for the class vs clean):", "",
                  "| defect | samples | AUROC | mean score | clean mean score |", "|---|---|---|---|---|"]
        for row in result["flyt"]:
            lines.append(f"| {row['defect']} | {row['samples']} | {_number(row['auroc'])} | "
                         f"{_number(row['mean_score'])} | {_number(row['clean_mean_score'])} |")
    return "\n".join(lines)
