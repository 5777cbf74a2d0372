"""Honest uncertainty for behavior metrics: bootstrap CIs over prompts, paired permutation tests, seed intervals.

The unit of resampling is the prompt (responses to one prompt are averaged first), because prompts, not
responses, are the independent draws of a benchmark. All functions are seeded and return plain floats.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
_CHUNK = 256  # bootstrap resamples drawn at once (memory: _CHUNK × n indices)
_EXACT_PERMUTATION_MAX_N = 16  # 2^16 sign patterns: enumerate instead of sampling


def _percentile_interval(estimates: np.ndarray) -> tuple[float, float]:
    tail = 100 * (1 - CONFIDENCE) / 2
    lo, hi = np.percentile(estimates, [tail, 100 - tail])
    return float(lo), float(hi)


def _bootstrap_means(values: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    n = len(values)
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, _CHUNK):
        stop = min(start + _CHUNK, n_resamples)
        out[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return out


def bootstrap_mean_ci(values: np.ndarray, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of mean(values): resample the n values with replacement
    `n_resamples` times and take the 2.5/97.5 percentiles of the resampled means. One value → (v, v)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        raise ValueError("bootstrap of an empty sample")
    return _percentile_interval(_bootstrap_means(values, n_resamples, np.random.default_rng(seed)))


def paired_difference_ci(before: np.ndarray, after: np.ndarray, n_resamples: int = 2000,
                         seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of mean(after − before) over matched prompts (prompts resampled as pairs)."""
    before, after = np.asarray(before, np.float64), np.asarray(after, np.float64)
    if before.shape != after.shape:
        raise ValueError(f"paired samples differ in length: {before.shape} vs {after.shape}")
    return bootstrap_mean_ci(after - before, n_resamples, seed)


def unpaired_difference_ci(before: np.ndarray, after: np.ndarray, n_resamples: int = 2000,
                           seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of mean(after) − mean(before), each sample resampled on its own."""
    rng = np.random.default_rng(seed)
    a = _bootstrap_means(np.asarray(before, np.float64), n_resamples, rng)
    b = _bootstrap_means(np.asarray(after, np.float64), n_resamples, rng)
    return _percentile_interval(b - a)


def paired_permutation_p(differences: np.ndarray, n_permutations: int = 10000, seed: int = 0) -> float:
    """Two-sided sign-flip test of mean(d) = 0 for paired differences d: under the null each d_i is as
    likely −d_i. Exact over all 2^n sign patterns when n ≤ 16 (p = #{|T*| ≥ |T|} / 2^n), otherwise Monte
    Carlo with the +1 correction p = (1 + #{|T*| ≥ |T|}) / (1 + n_permutations). All d = 0 → p = 1."""
    d = np.asarray(differences, dtype=np.float64)
    if len(d) == 0:
        raise ValueError("permutation test of an empty sample")
    observed = abs(d.mean())
    tolerance = 1e-12 * max(1.0, observed)  # ties in floating point count as "at least as extreme"
    if len(d) <= _EXACT_PERMUTATION_MAX_N:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
        return float(np.mean(np.abs(signs @ d / len(d)) >= observed - tolerance))
    rng = np.random.default_rng(seed)
    extreme = 0
    for start in range(0, n_permutations, _CHUNK):
        count = min(_CHUNK, n_permutations - start)
        signs = rng.choice((1.0, -1.0), size=(count, len(d)))
        extreme += int(np.sum(np.abs(signs @ d / len(d)) >= observed - tolerance))
    return (1 + extreme) / (1 + n_permutations)


def seed_interval(values: np.ndarray) -> tuple[float, float] | None:
    """95% Student-t interval of the mean across seeds: mean ± t_{n−1} · s / √n (s with n − 1 in the
    denominator). Fewer than two seeds → None (no spread can be estimated)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return None
    half = stats.t.ppf((1 + CONFIDENCE) / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)
