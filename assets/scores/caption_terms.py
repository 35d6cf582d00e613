"""caption_terms: the MetaCLIP metadata entries each caption matches (input of MetaCLIP
balancing) and the demographic group it names.

The project ships a modest entry list (resources/terms/metaclip_entries.txt: the sample
domain's terms and common WordNet-style nouns); point CurationFiles.metaclip_entries
($CLIPSIEVE_METADATA) at MetaCLIP's 500k-entry list for real crawls. Columns: concept_ids
(entry ids: the entry's index in the file, comments excluded), concept_count, and
caption_group: the group of CurationFiles.group_terms (shipped:
resources/terms/demographic_groups.json) whose terms the caption
names when it names exactly one group's, which the audits' representation, retrieval-bias
and association figures read. Computed here, once per shard, rather than by regular
expressions over the whole pool in every subset's and audit's step.
"""

import json
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from assets.scores.common import usable_samples, write_scores
from assets.scores.text_match import PhraseMatcher, read_terms
from resources.curation_files import TERMS_DIR
from resources.lake import LakeResource
from resources.versions import file_digest

METADATA_PATH = str(TERMS_DIR / "metaclip_entries.txt")  # the shipped lists
GROUPS_PATH = str(TERMS_DIR / "demographic_groups.json")


def code_version(metadata_path: str, groups_path: str) -> str:
    return f"2+{file_digest(metadata_path)}+{file_digest(groups_path)}"


@lru_cache(maxsize=4)
def entries(path: str = METADATA_PATH) -> list[str]:
    return read_terms(path)


def group_patterns(path: str = GROUPS_PATH) -> dict[str, str]:
    """group -> whole-word regular expression of its terms, for every group of every axis."""
    spec = json.loads(Path(path).read_text())
    patterns = {}
    for axis, groups in spec.items():
        if axis.startswith("_"):
            continue
        for group, terms in groups.items():
            patterns[group] = r"\b(?:" + "|".join(re.escape(t.lower()) for t in terms) + r")\b"
    return patterns


def caption_groups(captions: pa.ChunkedArray | pa.Array, patterns: dict[str, str]) -> pa.Array:
    """For each caption, the group whose pattern its lower-cased text matches when exactly one
    group's does; else null (no group, several groups, or no caption)."""
    lowered = pc.utf8_lower(captions.cast(pa.string()))
    names = list(patterns)
    if not names or not len(lowered):
        return pa.nulls(len(lowered), pa.string())
    hits = np.stack([np.asarray(pc.fill_null(pc.match_substring_regex(lowered, pattern), False))
                     for pattern in patterns.values()])
    only = hits.sum(axis=0) == 1
    labels = np.asarray(names, dtype=object)[hits.argmax(axis=0)]
    return pa.array(np.where(only, labels, None), pa.string())


def concept_scores(samples: pa.Table, metadata_path: str = METADATA_PATH, groups_path: str = GROUPS_PATH) -> pa.Table:
    matches = _matcher(metadata_path).match_all(samples.column("caption"))
    return pa.table({
        "key": samples.column("key"),
        "shard": samples.column("shard"),
        "concept_ids": matches,
        "concept_count": pc.list_value_length(matches).cast(pa.int32()),
        "caption_group": caption_groups(samples.column("caption"), group_patterns(groups_path)),
    })


@lru_cache(maxsize=4)
def _matcher(path: str) -> PhraseMatcher:
    return PhraseMatcher(entries(path))


def score_shard(lake: LakeResource, shard: str, metadata_path: str = METADATA_PATH,
                groups_path: str = GROUPS_PATH) -> tuple[pa.Table, dict]:
    """Write the shard's scores/caption_terms; the table and its figures."""
    table = concept_scores(usable_samples(lake, shard, ["key", "shard", "caption"]), metadata_path, groups_path)
    metadata = write_scores(lake, shard, "caption_terms", table)
    counts = table.column("concept_count").to_numpy()
    metadata["share/no_entry"] = float((counts == 0).mean()) if len(counts) else 0.0
    metadata["entries"] = len(entries(metadata_path))
    groups = table.column("caption_group")
    metadata["share/caption_group"] = 1 - groups.null_count / len(groups) if len(groups) else 0.0
    return table, metadata
