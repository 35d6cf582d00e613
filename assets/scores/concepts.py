"""concepts: the MetaCLIP metadata entries each caption matches (input of MetaCLIP balancing).

The project ships a modest entry list (resources/terms/metaclip_entries.txt: the sample
domain's terms and common WordNet-style nouns); set $CLIPSIEVE_METADATA to MetaCLIP's
500k-entry list for real crawls. Columns: concept_ids (entry ids: the entry's index in
the file, comments excluded), concept_count.
"""

import os
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from dagster import AssetExecutionContext, MaterializeResult

from assets.scores.common import for_each_shard, score_asset, usable_samples, write_scores
from assets.scores.text_match import PhraseMatcher, read_terms
from resources.lake import LakeResource
from resources.versions import file_digest

METADATA_PATH = os.environ.get(
    "CLIPSIEVE_METADATA", str(Path(__file__).resolve().parents[2] / "resources" / "terms" / "metaclip_entries.txt"))
CODE_VERSION = f"1+{file_digest(METADATA_PATH)}"


@lru_cache(maxsize=1)
def entries() -> list[str]:
    return read_terms(METADATA_PATH)


def concept_scores(samples: pa.Table) -> pa.Table:
    matches = _matcher().match_all(samples.column("caption"))
    return pa.table({
        "key": samples.column("key"),
        "shard": samples.column("shard"),
        "concept_ids": matches,
        "concept_count": pc.list_value_length(matches).cast(pa.int32()),
    })


@lru_cache(maxsize=1)
def _matcher() -> PhraseMatcher:
    return PhraseMatcher(entries())


@score_asset(CODE_VERSION, "python")
def concepts(context: AssetExecutionContext, lake: LakeResource) -> MaterializeResult:
    """MetaCLIP metadata entries matched by each usable sample's caption."""

    def one(shard: str) -> dict:
        table = concept_scores(usable_samples(lake, shard, ["key", "shard", "caption"]))
        metadata = write_scores(lake, shard, "concepts", table)
        counts = table.column("concept_count").to_numpy()
        metadata["share/no_entry"] = float((counts == 0).mean()) if len(counts) else 0.0
        metadata["entries"] = len(entries())
        return metadata

    return for_each_shard(context, one)
