"""toxicity: caption toxicity probability and a count of flagged terms.

`toxicity` comes from alt-profanity-check: linear SVMs over tf-idf word counts, trained on
toxic-comment data, whose model ships inside the package (nothing is downloaded). It is
applied with numpy from arrays exported once (resources/toxicity_model.py), not through
scikit-learn. `flagged_terms` counts whole-word hits of a term list (CurationFiles.toxic_terms;
shipped: resources/terms/toxic_terms.txt), as audits of LAION count hateful terms.
"""

from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from assets.scores.common import usable_samples, write_scores
from assets.scores.text_match import PhraseMatcher, read_terms
from resources.curation_files import TERMS_DIR
from resources.lake import LakeResource
from resources.toxicity_model import load_toxicity_model, package_digest
from resources.versions import file_digest

TERMS_PATH = str(TERMS_DIR / "toxic_terms.txt")  # the shipped list


def code_version(terms_path: str) -> str:
    """The term list and the model's files are in the version: either changed restales."""
    return f"1+{file_digest(terms_path)}+{package_digest()}"


@lru_cache(maxsize=4)
def _matcher(terms_path: str) -> PhraseMatcher:
    return PhraseMatcher(read_terms(terms_path))


def toxicity_probability(captions: list[str]) -> np.ndarray:
    return load_toxicity_model().probability(captions).astype(np.float32)


def toxicity_scores(samples: pa.Table, terms_path: str = TERMS_PATH) -> pa.Table:
    captions = [c or "" for c in samples.column("caption").to_pylist()]
    matcher = _matcher(terms_path)
    return pa.table({
        "key": samples.column("key"),
        "shard": samples.column("shard"),
        "toxicity": pa.array(toxicity_probability(captions), pa.float32()),
        "flagged_terms": pc.list_value_length(matcher.match_all(pa.array(captions, pa.string()))).cast(pa.int32()),
    })


def score_shard(lake: LakeResource, shard: str, terms_path: str = TERMS_PATH) -> tuple[pa.Table, dict]:
    """Write the shard's scores/toxicity, flagging the terms in `terms_path`; the table and its figures."""
    table = toxicity_scores(usable_samples(lake, shard, ["key", "shard", "caption"]), terms_path)
    metadata = write_scores(lake, shard, "toxicity", table)
    values = table.column("toxicity").to_numpy()
    metadata["share/toxicity>0.5"] = float((values > 0.5).mean()) if len(values) else 0.0
    metadata["terms"] = terms_path
    return table, metadata
