"""toxicity: caption toxicity probability and a count of flagged terms.

`toxicity` comes from alt-profanity-check: linear SVMs over tf-idf word counts, trained on
toxic-comment data, whose model ships inside the package (nothing is downloaded). It is
applied with numpy from arrays exported once (resources/toxicity_model.py), not through
scikit-learn. `flagged_terms` counts whole-word hits of resources/terms/toxic_terms.txt
(or $CLIPSIEVE_TOXIC_TERMS), as audits of LAION count hateful terms.
"""

import os
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from dagster import AssetExecutionContext, MaterializeResult

from assets.scores.common import for_each_shard, score_asset, usable_samples, write_scores
from assets.scores.text_match import TERMS_DIR, PhraseMatcher, read_terms
from resources.lake import LakeResource
from resources.toxicity_model import load_toxicity_model, package_digest
from resources.versions import file_digest

TERMS_PATH = os.environ.get("CLIPSIEVE_TOXIC_TERMS", str(TERMS_DIR / "toxic_terms.txt"))
# The model's files are in the version: a profanity-check release with a new model restales.
CODE_VERSION = f"1+{file_digest(TERMS_PATH)}+{package_digest()}"


@lru_cache(maxsize=1)
def _matcher() -> PhraseMatcher:
    return PhraseMatcher(read_terms(TERMS_PATH))


def toxicity_probability(captions: list[str]) -> np.ndarray:
    return load_toxicity_model().probability(captions).astype(np.float32)


def toxicity_scores(samples: pa.Table) -> pa.Table:
    captions = [c or "" for c in samples.column("caption").to_pylist()]
    matcher = _matcher()
    return pa.table({
        "key": samples.column("key"),
        "shard": samples.column("shard"),
        "toxicity": pa.array(toxicity_probability(captions), pa.float32()),
        "flagged_terms": pc.list_value_length(matcher.match_all(pa.array(captions, pa.string()))).cast(pa.int32()),
    })


@score_asset(CODE_VERSION, "numpy")
def toxicity(context: AssetExecutionContext, lake: LakeResource) -> MaterializeResult:
    """Caption toxicity probability (alt-profanity-check) and flagged-term count per usable sample."""

    def one(shard: str) -> dict:
        table = toxicity_scores(usable_samples(lake, shard, ["key", "shard", "caption"]))
        metadata = write_scores(lake, shard, "toxicity", table)
        values = table.column("toxicity").to_numpy()
        metadata["share/toxicity>0.5"] = float((values > 0.5).mean()) if len(values) else 0.0
        return metadata

    return for_each_shard(context, one)
