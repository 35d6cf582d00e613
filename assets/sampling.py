"""Sampling policies from FLYT ("Filter Like You Test", Shechter & Carmon, 2025): a subset as a
multiset, members drawn by their score, a good member drawn more than once.

Soft Cap Sampling (SCS): logits are the scores (over `temperature`); a batch is drawn without
replacement from softmax(logits), each drawn member's logit is lowered by
`repetition_penalty`, and again until `total_size` draws. A member is drawn again only while
its lowered score still competes: the cap is soft. FLYT's released subsets use penalty 0.15
with total_size the pool size (DataComp medium: 128M draws from a 128M pool).

Hard Cap Sampling (HCS): draws with replacement from the fixed softmax(logits), a member
masked once it has been drawn `frequency_limit` times (FLYT: 15).

A batch without replacement from softmax(logits) is drawn as the top `batch` of logits plus
Gumbel noise (the Gumbel-top-k trick: the same distribution as drawing one at a time without
replacement, in one pass over the pool). Both are seeded and deterministic. A missing score
(NaN) is never drawn.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Multiset:
    """Members (positions in the scored pool, ascending) with how many times each was drawn."""
    members: np.ndarray  # int64, distinct, ascending
    counts: np.ndarray  # int64, each >= 1

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def repeated(self) -> np.ndarray:
        """Each member as many times as drawn (DataComp's uid file repeats a uid so)."""
        return np.repeat(self.members, self.counts)

    @classmethod
    def from_draws(cls, draws: np.ndarray) -> "Multiset":
        members, counts = np.unique(np.asarray(draws, np.int64), return_counts=True)
        return cls(members, counts.astype(np.int64))


def _logits(scores: np.ndarray, temperature: float) -> np.ndarray:
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, not {temperature}")
    logits = np.asarray(scores, np.float64) / temperature
    return np.where(np.isnan(logits), -np.inf, logits)


def _check(total_size: int, batch_size: int) -> None:
    if total_size < 0:
        raise ValueError(f"total_size must not be negative, not {total_size}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")


def soft_cap_sampling(scores: np.ndarray, total_size: int, repetition_penalty: float = 0.15,
                      batch_size: int = 100_000, temperature: float = 1.0, seed: int = 0) -> Multiset:
    """SCS over `scores` (one per pool member): `total_size` draws in batches of `batch_size`."""
    _check(total_size, batch_size)
    logits = _logits(scores, temperature)
    drawable = int(np.isfinite(logits).sum())
    if total_size and not drawable:
        raise ValueError("no member has a score to draw by")
    rng = np.random.default_rng(seed)
    counts = np.zeros(len(logits), np.int64)
    drawn = 0
    while drawn < total_size:
        size = min(batch_size, total_size - drawn, drawable)
        keys = logits + rng.gumbel(size=len(logits))
        batch = np.argpartition(-keys, size - 1)[:size] if size < len(keys) else np.arange(len(keys))
        batch = batch[np.isfinite(keys[batch])]
        counts[batch] += 1
        logits[batch] -= repetition_penalty
        drawn += len(batch)
    return _multiset(counts)


def hard_cap_sampling(scores: np.ndarray, total_size: int, frequency_limit: int = 15,
                      batch_size: int = 100_000, temperature: float = 1.0, seed: int = 0) -> Multiset:
    """HCS over `scores`: `total_size` draws with replacement, none more than `frequency_limit`
    times (draws of a capped member are dropped, in draw order)."""
    _check(total_size, batch_size)
    if frequency_limit < 1:
        raise ValueError(f"frequency_limit must be at least 1, not {frequency_limit}")
    logits = _logits(scores, temperature)
    finite = np.isfinite(logits)
    if total_size > frequency_limit * int(finite.sum()):
        raise ValueError(f"{total_size} draws cannot be made from {int(finite.sum())} scored members "
                         f"at most {frequency_limit} times each")
    weights = np.zeros(len(logits))
    weights[finite] = np.exp(logits[finite] - logits[finite].max())
    rng = np.random.default_rng(seed)
    counts = np.zeros(len(logits), np.int64)
    drawn = 0
    while drawn < total_size:
        open_weights = np.where(counts < frequency_limit, weights, 0.0)
        batch = rng.choice(len(logits), size=min(batch_size, total_size - drawn), p=open_weights / open_weights.sum())
        # A draw is kept while its member has room: the i-th draw of a member in this batch
        # is kept when the member had fewer than frequency_limit - i draws before it.
        order = np.argsort(batch, kind="stable")
        ordered = batch[order]
        starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
        rank = np.empty(len(batch), np.int64)
        rank[order] = np.arange(len(batch)) - np.repeat(starts, np.diff(np.concatenate([starts, [len(batch)]])))
        kept = batch[counts[batch] + rank < frequency_limit][:total_size - drawn]
        np.add.at(counts, kept, 1)
        drawn += len(kept)
    return _multiset(counts)


def _multiset(counts: np.ndarray) -> Multiset:
    members = np.flatnonzero(counts)
    return Multiset(members.astype(np.int64), counts[members])
