"""Derived element metrics: ratios computed from additive `ElementStats` counters.

A metric is one function of `ElementStats` registered with `@element_metric`; per-tensor rows,
per-layer / per-module-kind / model aggregates, JSON and HDF5 all pick it up from `ELEMENT_METRICS`.
A ratio whose denominator is zero is None (JSON null), never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from dynamics.element_stats import ABS_TOLERANCES, REL_TOLERANCES, ElementStats

MetricValue = float | dict[str, float | None] | None
ELEMENT_METRICS: dict[str, Callable[[ElementStats], MetricValue]] = {}


def element_metric(fn: Callable[[ElementStats], MetricValue]) -> Callable[[ElementStats], MetricValue]:
    """Register `fn` under its own name."""
    ELEMENT_METRICS[fn.__name__] = fn
    return fn


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


@element_metric
def bitwise_sparsity(s: ElementStats) -> float | None:
    """1 − changed / n: share of elements whose stored bits are identical."""
    return None if s.numel == 0 else 1.0 - s.changed / s.numel


@element_metric
def update_norm(s: ElementStats) -> float:
    """‖Δ‖_F = sqrt(Σ Δ²) over finite pairs."""
    return math.sqrt(s.sum_sq_delta)


@element_metric
def base_norm(s: ElementStats) -> float:
    """‖W0‖_F over finite pairs."""
    return math.sqrt(s.sum_sq_a)


@element_metric
def relative_update_norm(s: ElementStats) -> float | None:
    """‖Δ‖_F / ‖W0‖_F; None when W0 = 0."""
    return _ratio(math.sqrt(s.sum_sq_delta), math.sqrt(s.sum_sq_a))


@element_metric
def mean_abs_delta_moved(s: ElementStats) -> float | None:
    """Σ|Δ| / moved: mean |Δ| of the elements that moved (finite, not ±0 flips)."""
    return _ratio(s.sum_abs_delta, s.moved)


@element_metric
def one_ulp_fraction(s: ElementStats) -> float | None:
    """Share of moved elements that moved by exactly one ULP of the stored dtype."""
    return _ratio(s.ulp_histogram[0], s.moved)


@element_metric
def abs_tolerance_sparsity(s: ElementStats) -> dict[str, float | None]:
    """For each τ: (finite pairs with |Δ| ≤ τ) / n; non-finite pairs count as changed."""
    return {f"{t:g}": _ratio(c, s.numel) for t, c in zip(ABS_TOLERANCES, s.within_abs)}


@element_metric
def rel_tolerance_sparsity(s: ElementStats) -> dict[str, float | None]:
    """For each τ: (finite pairs with |Δ| ≤ τ·max(|W0|, ε)) / n."""
    return {f"{t:g}": _ratio(c, s.numel) for t, c in zip(REL_TOLERANCES, s.within_rel)}


@element_metric
def hidden_by_bf16_fraction(s: ElementStats) -> float | None:
    """float32 pairs: share of moved elements whose bf16 roundings are equal (None otherwise)."""
    return None if s.hidden_by_bf16 is None else _ratio(s.hidden_by_bf16, s.moved)


@element_metric
def hidden_by_fp16_fraction(s: ElementStats) -> float | None:
    """float32 pairs: share of moved elements whose fp16 roundings are equal (None otherwise)."""
    return None if s.hidden_by_fp16 is None else _ratio(s.hidden_by_fp16, s.moved)


@element_metric
def unchanged_row_fraction(s: ElementStats) -> float | None:
    """2-D tensors: share of rows with no changed element (None for other ranks)."""
    return None if s.rows is None else _ratio(s.unchanged_rows, s.rows)


@element_metric
def unchanged_col_fraction(s: ElementStats) -> float | None:
    """2-D tensors: share of columns with no changed element (None for other ranks)."""
    return None if s.cols is None else _ratio(s.unchanged_cols, s.cols)


def derived_metrics(s: ElementStats) -> dict[str, MetricValue]:
    """Every registered metric of `s`, by name."""
    return {name: fn(s) for name, fn in ELEMENT_METRICS.items()}
