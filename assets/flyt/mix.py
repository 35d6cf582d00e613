"""M-FLYT: a learned linear mix of score columns, one score per pair (Shechter & Carmon, 2025).

Each column is standardized over the pairs the mix was fitted on (a missing value counts as
the mean), then weighted; the weights are trained with FLYT's loop (assets/flyt/training.py:
the mix is the scorer) or given in a JSON file. A shard's columns are read from its own score
files, so scoring a shard never reads another's.
"""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from resources.lake import LakeResource, score_path

# Column -> (score file, whether it is under the model id): what a mix may use. `english` is
# 1 for a caption fastText reads as English (its probability), 0 otherwise.
MIX_SOURCES: dict[str, tuple[str, bool]] = {
    "similarity": ("clip_similarity", True),
    "punsafe": ("nsfw", True),
    "pwatermark": ("watermark", True),
    "aesthetic": ("aesthetic", True),
    "flyt": ("flyt", True),
    "toxicity": ("toxicity", False),
    "caption_words": ("quality", False),
    "min_side": ("quality", False),
    "aspect_ratio": ("quality", False),
    "english": ("language", False),
}
DEFAULT_COLUMNS = tuple(MIX_SOURCES)


class ScoreMix(torch.nn.Module):
    """Scores (n,) from score columns (n, k): weights . standardized columns + bias."""

    def __init__(self, columns: list[str], mean: np.ndarray, std: np.ndarray):
        super().__init__()
        unknown = sorted(set(columns) - set(MIX_SOURCES))
        if unknown:
            raise ValueError(f"unknown mix column(s) {unknown}; known: {list(MIX_SOURCES)}")
        self.columns = list(columns)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(np.where(np.asarray(std) > 0, std, 1.0), dtype=torch.float32))
        self.linear = torch.nn.Linear(len(columns), 1)
        torch.nn.init.zeros_(self.linear.weight)  # untrained: every pair alike (uniform weights)
        torch.nn.init.zeros_(self.linear.bias)

    @classmethod
    def fitted(cls, columns: list[str], features: np.ndarray) -> "ScoreMix":
        """A mix standardized over `features` (n, k), weights zero."""
        return cls(columns, np.nanmean(features, axis=0), np.nanstd(features, axis=0))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        standardized = torch.nan_to_num((features - self.mean) / self.std, nan=0.0)
        return self.linear(standardized).squeeze(-1)

    def to_json(self) -> dict:
        return {"columns": self.columns, "mean": self.mean.tolist(), "std": self.std.tolist(),
                "weights": self.linear.weight.detach()[0].tolist(), "bias": float(self.linear.bias.detach()[0])}

    @classmethod
    def from_json(cls, described: dict) -> "ScoreMix":
        """A mix from `to_json`'s layout; `mean` and `std` default to 0 and 1 (weights on raw columns)."""
        columns = list(described["columns"])
        weights = described["weights"]
        if len(weights) != len(columns):
            raise ValueError(f"{len(weights)} weights for {len(columns)} columns")
        mix = cls(columns, described.get("mean", [0.0] * len(columns)), described.get("std", [1.0] * len(columns)))
        with torch.no_grad():
            mix.linear.weight.copy_(torch.tensor([weights], dtype=torch.float32))
            mix.linear.bias.fill_(float(described.get("bias", 0.0)))
        return mix.eval()


def read_mix(path: str | Path) -> ScoreMix:
    """Mix weights given in a JSON file: {"columns": [...], "weights": [...], optional "mean",
    "std" (standardization) and "bias"}."""
    return ScoreMix.from_json(json.loads(Path(path).read_text()))


def shard_columns(lake: LakeResource, shard: str, model_id: str, columns: list[str], keys: pa.Table) -> np.ndarray:
    """The `columns` of the pairs `keys` (key column, one shard) as float64 (n, k), NaN where missing,
    read from the shard's score files (each file once)."""
    wanted = keys.column("key").to_pylist()
    out = np.full((len(wanted), len(columns)), np.nan)
    by_file: dict[tuple[str, bool], list[int]] = {}
    for j, column in enumerate(columns):
        by_file.setdefault(MIX_SOURCES[column], []).append(j)
    for (name, under_model), indices in by_file.items():
        table = lake.read_parquet(score_path(shard, name, model_id if under_model else None))
        place = {key: i for i, key in enumerate(table.column("key").to_pylist())}
        rows = np.array([place.get(key, -1) for key in wanted])
        found = rows >= 0
        for j in indices:
            values = _column_values(table, columns[j])
            out[found, j] = values[rows[found]]
    return out


def _column_values(table: pa.Table, column: str) -> np.ndarray:
    if column == "english":
        is_english = np.array([language == "en" for language in table.column("language").to_pylist()])
        return np.where(is_english, table.column("language_score").to_numpy(zero_copy_only=False), 0.0)
    return table.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
