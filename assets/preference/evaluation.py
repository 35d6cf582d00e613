"""The preference pairs measured against the crawl's ground truth (`clipsieve evaluate`, the
evaluation asset): how often the chosen caption is the true one, how many planted
hallucinations were chosen, pairs under the margin and dangling references (both must be 0),
and the text-in-image score against the images known to carry rendered text.

Needs the sample crawl's candidate_truth.parquet (key, shard, candidate, kind) beside its
ground_truth.parquet, and for ptext a ground truth with a `text_in_image` column.
"""

import posixpath
from typing import Any

import fsspec
import pyarrow.dataset as ds

from resources.catalog import Catalog, read_sql

CANDIDATE_TRUTH = "candidate_truth"  # <crawl>/candidate_truth.parquet


def read_candidate_truth(truth: str, filesystem: fsspec.AbstractFileSystem | None = None) -> ds.Dataset | None:
    """The candidate_truth.parquet beside the ground truth at `truth` (a path or URL, or a path
    on `filesystem`), or None when there is none."""
    path = posixpath.join(posixpath.dirname(truth), f"{CANDIDATE_TRUTH}.parquet")
    if filesystem is None:
        filesystem, path = fsspec.core.url_to_fs(path)
    return ds.dataset(path, format="parquet", filesystem=filesystem) if filesystem.exists(path) else None


def evaluate_preference(catalog: Catalog, truth: ds.Dataset, candidate_truth: ds.Dataset | None,
                        rules: dict[str, Any]) -> dict[str, Any]:
    """`text_in_image` (AUROC, recall and FPR at max_ptext) when the truth says which images carry
    text, and `pairs` when there are pairs and a candidate truth; {} when neither applies."""
    connection = catalog.connection
    result: dict[str, Any] = {}
    if "text_in_image" in truth.schema.names and not catalog.missing.get("scores"):
        connection.register("truth", truth)
        try:
            figures = catalog.query(read_sql("evaluation/text_in_image.sql"), {"max_ptext": rules["max_ptext"]})
        finally:
            connection.unregister("truth")
        result["text_in_image"] = {**figures.to_pylist()[0], "max_ptext": rules["max_ptext"]}
    if candidate_truth is not None and catalog.has_view("preference_pairs") and catalog.has_view("caption_candidates"):
        connection.register("candidate_truth", candidate_truth)
        try:
            figures = catalog.query(read_sql("evaluation/preference_pairs.sql"), {"min_margin": rules["min_margin"]})
        finally:
            connection.unregister("candidate_truth")
        result["pairs"] = {**figures.to_pylist()[0], "rules": rules}
    return result


def format_preference(result: dict[str, Any]) -> list[str]:
    """Markdown lines for `evaluate_preference`'s result."""
    lines = []
    text = result.get("text_in_image")
    if text:
        lines += ["", f"Text in image (ptext > {text['max_ptext']}) against the images with rendered text:", "",
                  "| images with text | without | AUROC | recall | FPR |", "|---|---|---|---|---|",
                  f"| {text['positives']} | {text['negatives']} | {format_number(text['auroc'])} | "
                  f"{format_number(text['recall'])} | {format_number(text['fpr'])} |"]
    pairs = result.get("pairs")
    if pairs:
        lines += ["", "Preference pairs against the candidates' ground truth:", "",
                  "| pairs | images | chosen true | chosen hallucinated (colour, shape, absent object) | "
                  "chosen bad alt-text | below margin | dangling images | dangling captions |",
                  "|---|---|---|---|---|---|---|---|",
                  f"| {pairs['pairs']} | {pairs['images']} | {format_number(pairs['chosen_true_share'])} | "
                  f"{pairs['chosen_hallucinated']} ({pairs['chosen_wrong_colour']}, {pairs['chosen_wrong_shape']}, "
                  f"{pairs['chosen_absent_object']}) | {pairs['chosen_bad_alt_text']} | {pairs['below_margin']} | "
                  f"{pairs['dangling_images']} | {pairs['dangling_captions']} |"]
    return lines


def format_number(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)
