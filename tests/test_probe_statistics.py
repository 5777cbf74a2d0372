"""Bootstrap intervals, permutation tests and seed intervals: hand-checkable cases, then properties."""

import itertools

import numpy as np
import pytest
from scipy import stats

from probes.statistics import (
    bootstrap_mean_ci,
    paired_difference_ci,
    paired_permutation_p,
    seed_interval,
    unpaired_difference_ci,
)


def test_bootstrap_of_a_constant_is_the_constant():
    assert bootstrap_mean_ci(np.full(7, 0.25)) == (0.25, 0.25)


def test_bootstrap_interval_lies_within_the_sample_range_and_contains_the_mean():
    values = np.array([0.0, 0.0, 1.0, 1.0, 1.0])
    lo, hi = bootstrap_mean_ci(values, n_resamples=4000, seed=1)
    assert 0.0 <= lo < 0.6 < hi <= 1.0


def test_bootstrap_is_seeded():
    values = np.random.default_rng(0).random(30)
    assert bootstrap_mean_ci(values, seed=3) == bootstrap_mean_ci(values, seed=3)
    assert bootstrap_mean_ci(values, seed=3) != bootstrap_mean_ci(values, seed=4)


def test_paired_ci_is_the_bootstrap_of_differences():
    before, after = np.array([0.0, 1.0, 0.0, 1.0]), np.array([1.0, 1.0, 1.0, 1.0])
    assert paired_difference_ci(before, after, seed=2) == bootstrap_mean_ci(after - before, seed=2)
    with pytest.raises(ValueError):
        paired_difference_ci(before, after[:3])


def test_unpaired_ci_of_identical_constants_is_zero():
    assert unpaired_difference_ci(np.ones(5), np.ones(9)) == (0.0, 0.0)


def test_permutation_p_by_hand_for_three_prompts():
    # d = (1, 1, 1): of the 8 sign patterns only (+,+,+) and (−,−,−) reach |mean| = 1 → p = 2/8.
    assert paired_permutation_p(np.array([1.0, 1.0, 1.0])) == 0.25
    # d = (1, 2, 3), |mean| = 2: |±1 ±2 ±3|/3 ≥ 2 only for all-plus and all-minus → 2/8.
    assert paired_permutation_p(np.array([1.0, 2.0, 3.0])) == 0.25
    # d = (1, −1, 0): observed 0, every pattern is at least as extreme.
    assert paired_permutation_p(np.array([1.0, -1.0, 0.0])) == 1.0


def test_exact_enumeration_matches_brute_force():
    d = np.random.default_rng(5).normal(0.3, 1.0, size=10)
    observed = abs(d.mean())
    count = sum(abs(np.dot(s, d) / len(d)) >= observed - 1e-12 for s in itertools.product((1, -1), repeat=10))
    assert paired_permutation_p(d) == count / 2 ** 10


def test_monte_carlo_permutation_is_close_to_exact_for_n_17():
    d = np.random.default_rng(6).normal(0.4, 1.0, size=17)
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=17)))
    exact = np.mean(np.abs(signs @ d / 17) >= abs(d.mean()) - 1e-12)
    assert paired_permutation_p(d, n_permutations=20000, seed=0) == pytest.approx(exact, abs=0.01)


def test_permutation_p_is_roughly_uniform_under_the_null():
    rng = np.random.default_rng(7)
    ps = np.array([paired_permutation_p(rng.normal(size=40), n_permutations=500, seed=i) for i in range(200)])
    assert 0.02 <= np.mean(ps < 0.05) <= 0.10
    assert 0.4 <= ps.mean() <= 0.6


def test_bootstrap_ci_covers_the_true_mean_about_95_percent():
    rng = np.random.default_rng(8)
    covered = 0
    for i in range(200):
        lo, hi = bootstrap_mean_ci(rng.binomial(1, 0.3, size=100).astype(float), n_resamples=500, seed=i)
        covered += lo <= 0.3 <= hi
    assert 0.88 <= covered / 200 <= 0.99


def test_seed_interval_is_the_t_interval():
    values = np.array([0.1, 0.3, 0.2])
    half = stats.t.ppf(0.975, 2) * 0.1 / np.sqrt(3)
    lo, hi = seed_interval(values)
    assert lo == pytest.approx(0.2 - half) and hi == pytest.approx(0.2 + half)
    assert seed_interval(np.array([0.5])) is None
