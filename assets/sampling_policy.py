"""Sampling policies: a policy that sets `sampling` draws its members from the scores its
SELECT returns (assets/sampling.py), each member as many times as it was drawn.

A sampling policy's SELECT returns `key`, `shard` and `score` (a row per candidate; a
candidate returned twice keeps its higher score). Its parameters, as SET VARIABLEs:

    sampling            'soft_cap' (FLYT's Soft Cap Sampling) or 'hard_cap' (Hard Cap Sampling)
    total_size_share    draws, as a share of the scored pool (FLYT: 1.0, as many draws as the pool)
    temperature         logits = score / temperature (FLYT's scores are logits: 1.0; a cosine
                        similarity over 0.01 is CLIP's own logit, its logit scale being 100)
    repetition_penalty  soft_cap: lowered from a member's logit each time it is drawn (FLYT: 0.15)
    frequency_limit     hard_cap: most draws of one member (FLYT: 15)
    batch_share         soft_cap draws a batch of this share of the pool at a time (FLYT: 100,000
                        of 128M = 0.00078; a batch of the whole pool would draw everyone once)
    sampling_seed       the same seed always draws the same multiset

The candidates are numbered in (shard, key) order and written to a scratch file by DuckDB;
only their scores are read into memory (8 bytes a candidate), and the draws are joined back
by number, so no key is ever a Python object.
"""

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from assets.sampling import Multiset, hard_cap_sampling, soft_cap_sampling
from resources.catalog import Catalog, read_sql

SAMPLING_KINDS = ("soft_cap", "hard_cap")


@dataclass(frozen=True)
class SamplingSpec:
    """How a sampling policy draws (the module docstring says what each field means)."""
    kind: str
    total_size_share: float = 1.0
    temperature: float = 1.0
    repetition_penalty: float = 0.15
    frequency_limit: int = 15
    batch_share: float = 0.00078
    seed: int = 0

    @classmethod
    def from_params(cls, params: dict[str, str]) -> "SamplingSpec | None":
        """The spec a policy's parameters in effect describe; None for a filter policy."""
        kind = params.get("sampling")
        if kind is None:
            return None
        if kind not in SAMPLING_KINDS:
            raise ValueError(f"sampling must be one of {list(SAMPLING_KINDS)}, not {kind!r}")
        numbers = {"total_size_share": float, "temperature": float, "repetition_penalty": float,
                   "frequency_limit": int, "batch_share": float, "sampling_seed": int}
        values = {}
        for name, kind_of in numbers.items():
            if name in params:
                try:
                    values[name] = kind_of(float(params[name]))
                except ValueError:
                    raise ValueError(f"{name} must be a number, not {params[name]!r}") from None
        if values.get("total_size_share", 1.0) < 0 or not 0 < values.get("batch_share", 0.00078) <= 1:
            raise ValueError("total_size_share must not be negative and batch_share must be in (0, 1]")
        if "sampling_seed" in values:
            values["seed"] = values.pop("sampling_seed")
        return cls(kind, **values)

    def draw(self, scores: np.ndarray, pool: int) -> Multiset:
        """The multiset drawn from `scores` (one per candidate) for a scored pool of `pool`."""
        total_size = round(self.total_size_share * pool)
        batch_size = max(1, round(self.batch_share * pool))
        if self.kind == "soft_cap":
            return soft_cap_sampling(scores, total_size, self.repetition_penalty, batch_size,
                                     self.temperature, self.seed)
        return hard_cap_sampling(scores, total_size, self.frequency_limit, batch_size, self.temperature, self.seed)


def _candidate_scores(path: str) -> np.ndarray:
    """The score column of the numbered candidates in `path`, placed by number."""
    file = pq.ParquetFile(path)
    scores = np.full(file.metadata.num_rows, np.nan)
    for batch in file.iter_batches(batch_size=1_000_000, columns=["position", "score"]):
        scores[batch.column("position").to_numpy()] = batch.column("score").to_numpy(zero_copy_only=False)
    return scores


def create_sampled_draws(catalog: Catalog, spec: SamplingSpec, pool: int, scratch: str) -> int:
    """Draw from the registered `policy_result` (key, shard, score) and create the temp view
    `policy_draws` (key, shard, draws) of the drawn members; the number of draws. The files
    it reads stay in `scratch` until the caller is done with the view."""
    connection = catalog.connection
    candidates = os.path.join(scratch, "sampling_candidates.parquet")
    catalog.query_to_parquet(read_sql("subsets/sampling_candidates.sql"), candidates)
    multiset = spec.draw(_candidate_scores(candidates), pool)
    drawn = os.path.join(scratch, "sampling_draws.parquet")
    pq.write_table(pa.table({"position": multiset.members, "draws": multiset.counts}), drawn)
    connection.register("sampling_candidates", ds.dataset(candidates, format="parquet"))
    connection.register("sampling_draws", ds.dataset(drawn, format="parquet"))
    connection.execute(read_sql("subsets/sampled_draws.sql"))
    return multiset.total
