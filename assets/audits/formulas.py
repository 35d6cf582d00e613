"""The audit formulas, as plain functions over numbers (each with its source below).

wilson_interval    95% Wilson score interval of a rate k/n
entropy_bits       Shannon entropy of a count distribution
skews, max_skew    Skew_a = ln(p_a / q_a) of the top-k results' group shares p against
                   target shares q; MaxSkew@k = max_a Skew_a (Geyik et al. 2019)
ndkl               normalized discounted KL divergence of the top-i group distributions
                   from the target, discounted by log2(i + 1) (Geyik et al. 2019)
weat               WEAT effect size d and a one-sided permutation p-value (Caliskan et al. 2017)
removal_ratios     per-group removal rate over the overall removal rate (Hong et al. 2024)
"""

import math

import numpy as np

Z95 = 1.959963984540054
SMOOTHING = 1e-6  # keeps ln(p / q) and KL finite when a group is absent from the top results


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """(low, high) of the Wilson score interval for k successes in n trials."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denominator = 1 + z * z / n
    return (max(0.0, (centre - margin) / denominator), min(1.0, (centre + margin) / denominator))


def entropy_bits(counts: list[int] | np.ndarray) -> float:
    counts = np.asarray(counts, dtype=np.float64)
    counts = counts[counts > 0]
    if counts.size == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def _shares(labels: list[str], groups: list[str]) -> np.ndarray:
    counts = np.array([labels.count(g) for g in groups], dtype=np.float64)
    return counts / counts.sum() if counts.sum() else counts


def skews(labels: list[str], target: dict[str, float]) -> dict[str, float]:
    """Skew of each group among ranked results `labels` against target shares."""
    groups = list(target)
    p = _shares(labels, groups)
    return {g: math.log((p[i] + SMOOTHING) / (target[g] + SMOOTHING)) for i, g in enumerate(groups)}


def max_skew(labels: list[str], target: dict[str, float]) -> float:
    return max(skews(labels, target).values())


def ndkl(labels: list[str], target: dict[str, float]) -> float:
    """(1/Z) sum_i KL(D_top-i || D*) / log2(i + 1), Z = sum_i 1 / log2(i + 1)."""
    if not labels:
        return 0.0
    groups = list(target)
    q = np.array([target[g] for g in groups]) + SMOOTHING
    total, z = 0.0, 0.0
    for i in range(1, len(labels) + 1):
        p = _shares(labels[:i], groups) + SMOOTHING
        total += float((p * np.log(p / q)).sum()) / math.log2(i + 1)
        z += 1 / math.log2(i + 1)
    return total / z


def _association(w: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """s(w, A, B) = mean_a cos(w, a) - mean_b cos(w, b) for each row of w (all normalized)."""
    return (w @ a.T).mean(axis=1) - (w @ b.T).mean(axis=1)


def weat(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray, permutations: int = 10_000,
         seed: int = 0) -> dict[str, float]:
    """Effect size d of targets X vs Y on attributes A vs B, and a one-sided permutation
    p-value (share of random X/Y splits whose difference of means is at least the observed)."""
    s = _association(np.concatenate([x, y]), a, b)
    sx, sy = s[: len(x)], s[len(x):]
    d = (sx.mean() - sy.mean()) / s.std(ddof=1)
    observed = sx.mean() - sy.mean()
    rng = np.random.default_rng(seed)
    labels = np.zeros(len(s), dtype=bool)
    labels[: len(x)] = True
    # One shuffle per row, in one call: the same draws as a loop of rng.permutation(labels).
    permuted = rng.permuted(np.broadcast_to(labels, (permutations, len(s))), axis=1)
    # As float64 first: numpy multiplies a bool matrix by a float vector in a plain loop,
    # ten times slower than BLAS on floats (0.17 against 0.02 s at 10,000 x 1,000).
    in_x = permuted.astype(np.float64) @ s
    differences = in_x / len(x) - (s.sum() - in_x) / len(y)
    p_value = (np.sum(differences >= observed - 1e-12) + 1) / (permutations + 1)
    return {"effect_size": float(d), "p_value": float(p_value), "x": int(len(x)), "y": int(len(y))}


def removal_ratios(before: dict[str, int], after: dict[str, int], total_before: int,
                   total_after: int) -> dict[str, float | None]:
    """Per group: (removed_g / before_g) / (overall removed / overall before)."""
    overall = 1 - total_after / total_before if total_before else 0.0
    ratios: dict[str, float | None] = {}
    for group, count in before.items():
        rate = 1 - after.get(group, 0) / count if count else None
        ratios[group] = None if rate is None or overall == 0 else rate / overall
    return ratios
