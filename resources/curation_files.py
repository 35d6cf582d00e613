"""The curation's own files: policy folder, check bounds and term lists.

One resource, so the Dagster UI lists each file with what it is for. These files decide
which assets exist (one subset per policy file), which checks block, and the term lists'
digests are in their scores' code versions, so they are read when the definitions are
built: from the environment variable named in each description, else the file shipped
in the repository.
"""

import os
from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

REPO = Path(__file__).resolve().parents[1]
TERMS_DIR = REPO / "resources" / "terms"
# field -> (environment variable, shipped default)
DEFAULTS = {
    "policy_dir": ("CLIPSIEVE_POLICY_DIR", REPO / "sql" / "policies"),
    "checks": ("CLIPSIEVE_CHECKS", REPO / "sql" / "policies" / "checks.toml"),
    "toxic_terms": ("CLIPSIEVE_TOXIC_TERMS", TERMS_DIR / "toxic_terms.txt"),
    "metaclip_entries": ("CLIPSIEVE_METADATA", TERMS_DIR / "metaclip_entries.txt"),
    "group_terms": ("CLIPSIEVE_GROUP_TERMS", TERMS_DIR / "demographic_groups.json"),
    "neutral_prompts": ("CLIPSIEVE_NEUTRAL_PROMPTS", TERMS_DIR / "neutral_prompts.txt"),
    "association_terms": ("CLIPSIEVE_ASSOCIATION_TERMS", TERMS_DIR / "association.json"),
}


def _default(field: str) -> str:
    return str(DEFAULTS[field][1])


class CurationFiles(ConfigurableResource):
    """Where the policies, check bounds and term lists are."""

    policy_dir: str = Field(default=_default("policy_dir"), description=(
        "Folder of policy files: one subsets/<name> asset per <name>.sql ($CLIPSIEVE_POLICY_DIR)."))
    checks: str = Field(default=_default("checks"), description=(
        "TOML file of check bounds per policy, and which policies' checks block ($CLIPSIEVE_CHECKS)."))
    toxic_terms: str = Field(default=_default("toxic_terms"), description=(
        "Terms counted in captions as scores/toxicity's flagged_terms, one per line ($CLIPSIEVE_TOXIC_TERMS)."))
    metaclip_entries: str = Field(default=_default("metaclip_entries"), description=(
        "MetaCLIP metadata entries matched in captions by scores/caption_terms ($CLIPSIEVE_METADATA)."))
    group_terms: str = Field(default=_default("group_terms"), description=(
        "Demographic caption groups (JSON: group -> terms) for scores/caption_terms and the audits "
        "($CLIPSIEVE_GROUP_TERMS)."))
    neutral_prompts: str = Field(default=_default("neutral_prompts"), description=(
        "Neutral text prompts for the audits' retrieval-bias figures ($CLIPSIEVE_NEUTRAL_PROMPTS)."))
    association_terms: str = Field(default=_default("association_terms"), description=(
        "Target and attribute word sets for the audits' association test ($CLIPSIEVE_ASSOCIATION_TERMS)."))

    @classmethod
    def from_env(cls, **overrides: str | Path | None) -> "CurationFiles":
        """The files named by the environment, else the shipped ones; `overrides` win."""
        values = {field: os.environ.get(variable) or str(default) for field, (variable, default) in DEFAULTS.items()}
        values.update({k: str(v) for k, v in overrides.items() if v is not None})
        return cls(**values)
