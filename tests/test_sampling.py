"""FLYT's sampling policies (assets/sampling.py): Soft and Hard Cap Sampling as multisets."""

import numpy as np
import pytest

from assets.sampling import Multiset, hard_cap_sampling, soft_cap_sampling


def scores(n: int = 2_000, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1.5, n)


def test_soft_cap_sampling_draws_total_size_favours_high_scores_and_is_seeded():
    s = scores()
    drawn = soft_cap_sampling(s, total_size=2_000, repetition_penalty=0.15, batch_size=100, seed=3)
    assert drawn.total == 2_000 and np.all(drawn.counts >= 1)
    assert np.array_equal(drawn.members, np.unique(drawn.members))
    again = soft_cap_sampling(s, total_size=2_000, repetition_penalty=0.15, batch_size=100, seed=3)
    assert np.array_equal(drawn.members, again.members) and np.array_equal(drawn.counts, again.counts)
    other = soft_cap_sampling(s, total_size=2_000, repetition_penalty=0.15, batch_size=100, seed=4)
    assert not np.array_equal(drawn.counts, other.counts)
    # The best tenth is drawn many times each; the worst half fifteen times less.
    order = np.argsort(-s)
    per_member = np.zeros(len(s), np.int64)
    per_member[drawn.members] = drawn.counts
    best, worst = per_member[order[:200]].mean(), per_member[order[1_000:]].mean()
    assert best > 4 and best > 15 * worst
    assert len(drawn.members) < 0.6 * len(s)  # repeats: fewer distinct members than draws


def test_the_repetition_penalty_caps_softly():
    """A penalty far above the scores' spread lowers a drawn member below every undrawn one:
    nobody is drawn twice until everybody is drawn once. Without a penalty, the top members
    take draws in proportion to softmax."""
    s = scores()
    flat = soft_cap_sampling(s, total_size=2_000, repetition_penalty=1e6, batch_size=100)
    assert np.all(flat.counts == 1) and len(flat.members) == 2_000
    greedy = soft_cap_sampling(s, total_size=20_000, repetition_penalty=0.0, batch_size=1)
    p = np.exp(s - s.max())
    p /= p.sum()
    top = np.argmax(s)
    expected = 20_000 * p[top]
    assert abs(greedy.counts[np.searchsorted(greedy.members, top)] - expected) < 5 * np.sqrt(expected)


def test_a_batch_without_replacement_follows_softmax():
    """Gumbel-top-k draws the first member of a batch with probability softmax(logits)."""
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    first = np.zeros(4)
    for seed in range(4_000):
        keys = logits + np.random.default_rng(seed).gumbel(size=4)
        first[np.argmax(keys)] += 1
    np.testing.assert_allclose(first / first.sum(), [0.5, 0.3, 0.15, 0.05], atol=0.025)
    # And a batch of 2 never holds one member twice.
    two = soft_cap_sampling(logits, total_size=2, repetition_penalty=0, batch_size=2, seed=1)
    assert np.all(two.counts == 1) and len(two.members) == 2


def test_hard_cap_sampling_never_exceeds_the_frequency_limit():
    s = scores()
    drawn = hard_cap_sampling(s, total_size=2_000, frequency_limit=15, batch_size=100, seed=0)
    assert drawn.total == 2_000 and drawn.counts.max() == 15  # the best members hit the cap
    assert drawn.counts.max() <= 15
    again = hard_cap_sampling(s, total_size=2_000, frequency_limit=15, batch_size=100, seed=0)
    assert np.array_equal(drawn.counts, again.counts)
    capped = hard_cap_sampling(s, total_size=2_000, frequency_limit=1, batch_size=500)
    assert np.all(capped.counts == 1) and len(capped.members) == 2_000
    with pytest.raises(ValueError, match="cannot be made"):
        hard_cap_sampling(s, total_size=2_001, frequency_limit=1)


def test_missing_scores_are_never_drawn_and_bad_settings_are_refused():
    s = scores(100)
    s[::2] = np.nan
    for drawn in (soft_cap_sampling(s, 300, batch_size=10), hard_cap_sampling(s, 300, frequency_limit=10)):
        assert drawn.total == 300 and np.all(drawn.members % 2 == 1)
    with pytest.raises(ValueError, match="no member has a score"):
        soft_cap_sampling(np.full(5, np.nan), 3)
    with pytest.raises(ValueError, match="temperature"):
        soft_cap_sampling(s, 3, temperature=0)
    with pytest.raises(ValueError, match="batch_size"):
        hard_cap_sampling(s, 3, batch_size=0)


def test_a_multiset_repeats_each_member_as_drawn():
    drawn = Multiset.from_draws(np.array([5, 2, 5, 9, 5]))
    assert drawn.members.tolist() == [2, 5, 9] and drawn.counts.tolist() == [1, 3, 1] and drawn.total == 5
    assert drawn.repeated().tolist() == [2, 5, 5, 5, 9]
