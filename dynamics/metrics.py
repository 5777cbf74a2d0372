"""The registry of derived numbers: every ratio, share or ratio-to-chance is defined here once.

A metric is one function registered with what it needs:
- `element`: a function of additive `ElementStats` counters (per tensor, and of summed counters for a
  layer, a module kind, a dtype or the model: element-weighted);
- `matrix`: a function of a group of `TensorRecord`s that carry `GeometryStats` (the matrix pass);
- `probe`: a function of a probe result (e.g. `probes.fisher.FisherResult`) and one parameter;
- `overlap`: a function of additive `OverlapCounts` (R runs' update masks, `dynamics.overlap`);
- `paper`: a function of additive `PaperCounts` (the papers' own definitions, `dynamics.paper_metrics`);
- `optimizer`: a function of additive `OptimizerCounts` (Adam's state and fp32 masters, `dynamics.optimizer_analysis`).

JSON rows and aggregates, HDF5 columns, the terminal summary, series and the reports all read the
registered value by name (`Metric.label` is its one human label). A ratio whose denominator is zero is
None (JSON null), never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from dynamics.element_stats import ABS_TOLERANCES, REL_TOLERANCES, ElementStats

if TYPE_CHECKING:
    from dynamics.optimizer_counts import OptimizerCounts
    from dynamics.overlap_counts import OverlapCounts
    from dynamics.paper_metrics import PaperCounts
    from dynamics.result import TensorRecord

Needs = Literal["element", "matrix", "probe", "overlap", "paper", "optimizer"]
MetricValue = float | int | dict[str, float | None] | None

# The absolute tolerance of the published sparsity numbers (|Δ| ≤ 1e-5); the key of its grid entry.
HEADLINE_ABS_TOLERANCE: float = 1e-5
HEADLINE_ABS_TOLERANCE_KEY: str = f"{HEADLINE_ABS_TOLERANCE:g}"
assert HEADLINE_ABS_TOLERANCE in ABS_TOLERANCES


@dataclass(frozen=True)
class Metric:
    """One registered number: its name, what it needs, its function, its label and number format.

    `headline`: shown in the terminal summary's headline and in the reports' registered-metric tables.
    """

    name: str
    needs: Needs
    fn: Callable[..., MetricValue]
    label: str
    fmt: str = ".4f"
    headline: bool = False


METRICS: dict[str, Metric] = {}


def register(needs: Needs, label: str, fmt: str = ".4f", headline: bool = False) -> Callable:
    """Decorator: register `fn` under its own name (a name is registered once)."""

    def decorate(fn: Callable[..., MetricValue]) -> Callable[..., MetricValue]:
        if fn.__name__ in METRICS:
            raise ValueError(f"metric {fn.__name__} is registered twice")
        METRICS[fn.__name__] = Metric(fn.__name__, needs, fn, label, fmt, headline)
        return fn

    return decorate


def unregister(name: str) -> None:
    """Remove a metric (tests that register a toy metric clean up with this)."""
    METRICS.pop(name)


def metrics_needing(needs: Needs) -> dict[str, Metric]:
    return {name: m for name, m in METRICS.items() if m.needs == needs}


def derived_metrics(s: ElementStats) -> dict[str, MetricValue]:
    """Every registered element metric of `s`, by name."""
    return {name: m.fn(s) for name, m in metrics_needing("element").items()}


def matrix_metrics(records: Sequence[TensorRecord]) -> dict[str, MetricValue]:
    """Every registered matrix metric of a group of records (those without geometry are ignored)."""
    with_geometry = [r for r in records if r.geometry is not None]
    return {name: m.fn(with_geometry) for name, m in metrics_needing("matrix").items()}


def overlap_metrics(c: OverlapCounts) -> dict[str, MetricValue]:
    """Every registered overlap metric of `c`, by name."""
    return {name: m.fn(c) for name, m in metrics_needing("overlap").items()}


def paper_metrics_of(c: PaperCounts) -> dict[str, MetricValue]:
    """Every registered paper metric of `c`, by name."""
    return {name: m.fn(c) for name, m in metrics_needing("paper").items()}


def optimizer_metrics_of(c: OptimizerCounts) -> dict[str, MetricValue]:
    """Every registered optimizer metric of `c`, by name."""
    return {name: m.fn(c) for name, m in metrics_needing("optimizer").items()}


def probe_value(name: str, result: Any, parameter: Any = None) -> MetricValue:
    """The registered probe metric `name` of a probe result."""
    metric = METRICS[name]
    if metric.needs != "probe":
        raise ValueError(f"{name} is a {metric.needs} metric, not a probe metric")
    return metric.fn(result, parameter)


def format_value(name: str, value: MetricValue) -> str:
    """`value` in the metric's registered format; "n/a" for None."""
    return "n/a" if value is None or isinstance(value, dict) else format(value, METRICS[name].fmt)


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


# --- element metrics (Gate III: precision) -------------------------------------------------------

@register("element", "bitwise sparsity", headline=True)
def bitwise_sparsity(s: ElementStats) -> float | None:
    """1 − changed / n: share of elements whose stored bits are identical."""
    return None if s.numel == 0 else 1.0 - s.changed / s.numel


@register("element", "‖Δ‖_F", ".3e")
def update_norm(s: ElementStats) -> float:
    """‖Δ‖_F = sqrt(Σ Δ²) over finite pairs."""
    return math.sqrt(s.sum_sq_delta)


@register("element", "‖W0‖_F", ".3e")
def base_norm(s: ElementStats) -> float:
    """‖W0‖_F over finite pairs."""
    return math.sqrt(s.sum_sq_a)


@register("element", "relative update norm", ".3e", headline=True)
def relative_update_norm(s: ElementStats) -> float | None:
    """‖Δ‖_F / ‖W0‖_F; None when W0 = 0."""
    return _ratio(math.sqrt(s.sum_sq_delta), math.sqrt(s.sum_sq_a))


@register("element", "mean |Δ| of moved", ".3e")
def mean_abs_delta_moved(s: ElementStats) -> float | None:
    """Σ|Δ| / moved: mean |Δ| of the elements that moved (finite, not ±0 flips)."""
    return _ratio(s.sum_abs_delta, s.moved)


@register("element", "one-ULP share of moved", headline=True)
def one_ulp_fraction(s: ElementStats) -> float | None:
    """Share of moved elements that moved by exactly one ULP of the stored dtype."""
    return _ratio(s.ulp_histogram[0], s.moved)


@register("element", "≤ 2-ULP share of moved")
def two_ulp_fraction(s: ElementStats) -> float | None:
    """Share of moved elements that moved by one or two ULPs (histogram buckets 1 and 2)."""
    return _ratio(s.ulp_histogram[0] + s.ulp_histogram[1], s.moved)


@register("element", "abs tolerance sparsity")
def abs_tolerance_sparsity(s: ElementStats) -> dict[str, float | None]:
    """For each τ: (finite pairs with |Δ| ≤ τ) / n; non-finite pairs count as changed."""
    return {f"{t:g}": _ratio(c, s.numel) for t, c in zip(ABS_TOLERANCES, s.within_abs)}


@register("element", f"abs tolerance sparsity (|Δ|≤{HEADLINE_ABS_TOLERANCE:g})", headline=True)
def headline_tolerance_sparsity(s: ElementStats) -> float | None:
    """(finite pairs with |Δ| ≤ 1e-5) / n: the published absolute-tolerance sparsity."""
    return _ratio(s.within_abs[ABS_TOLERANCES.index(HEADLINE_ABS_TOLERANCE)], s.numel)


@register("element", "rel tolerance sparsity")
def rel_tolerance_sparsity(s: ElementStats) -> dict[str, float | None]:
    """For each τ: (finite pairs with |Δ| ≤ τ·max(|W0|, ε)) / n."""
    return {f"{t:g}": _ratio(c, s.numel) for t, c in zip(REL_TOLERANCES, s.within_rel)}


@register("element", "hidden by bf16 (fp32 pairs)")
def hidden_by_bf16_fraction(s: ElementStats) -> float | None:
    """float32 pairs: share of moved elements whose bf16 roundings are equal (None otherwise)."""
    return None if s.hidden_by_bf16 is None else _ratio(s.hidden_by_bf16, s.moved)


@register("element", "hidden by fp16 (fp32 pairs)")
def hidden_by_fp16_fraction(s: ElementStats) -> float | None:
    """float32 pairs: share of moved elements whose fp16 roundings are equal (None otherwise)."""
    return None if s.hidden_by_fp16 is None else _ratio(s.hidden_by_fp16, s.moved)


@register("element", "unchanged rows")
def unchanged_row_fraction(s: ElementStats) -> float | None:
    """2-D tensors: share of rows with no changed element (None for other ranks)."""
    return None if s.rows is None else _ratio(s.unchanged_rows, s.rows)


@register("element", "unchanged columns")
def unchanged_col_fraction(s: ElementStats) -> float | None:
    """2-D tensors: share of columns with no changed element (None for other ranks)."""
    return None if s.cols is None else _ratio(s.unchanged_cols, s.cols)


# --- matrix metrics (Gate II: geometry), over a group of matrices ---------------------------------

def _energy_weighted(records: Sequence[TensorRecord], field: str) -> float | None:
    weighted = [(getattr(r.geometry, field), r.stats.sum_sq_delta) for r in records
                if r.geometry.principal_energy is not None]
    total = sum(w for _, w in weighted)
    return sum(v * w for v, w in weighted) / total if total else None


@register("matrix", "ρ_k (Δ-weighted)", ".2e")
def principal_energy_weighted(records: Sequence[TensorRecord]) -> float | None:
    """Σ_t ρ_k(t)·‖Δ_t‖² / Σ_t ‖Δ_t‖²: the share of the group's update energy inside W0's top-k blocks."""
    return _energy_weighted(records, "principal_energy")


@register("matrix", "ρ_k / random baseline (Δ-weighted)", ".2f", headline=True)
def principal_energy_ratio(records: Sequence[TensorRecord]) -> float | None:
    """Σ_t ρ_k(t)‖Δ_t‖² / Σ_t (k²/(m_t n_t))‖Δ_t‖²: the group's principal energy over a random direction's.

    The one definition of "ρ_k / random baseline" (terminal, JSON, series, reports). Matrices with Δ = 0
    carry no weight; None without geometry or without any update energy.
    """
    energy = _energy_weighted(records, "principal_energy")
    baseline = _energy_weighted(records, "principal_energy_baseline")
    return energy / baseline if energy is not None and baseline else None


@register("matrix", "ρ_k / random baseline (median over matrices)", ".2f", headline=True)
def principal_energy_ratio_median(records: Sequence[TensorRecord]) -> float | None:
    """Median over matrices of ρ_k(t) / (k²/(m_t n_t)), each matrix counting once whatever its ‖Δ_t‖²
    (the Δ-weighted `principal_energy_ratio` follows the few matrices that carry most energy). Even
    counts take the mean of the two middle values; None when no matrix has a defined ρ_k."""
    ratios = sorted(r.geometry.principal_energy / r.geometry.principal_energy_baseline for r in records
                    if r.geometry.principal_energy is not None and r.geometry.principal_energy_baseline)
    if not ratios:
        return None
    middle = len(ratios) // 2
    return ratios[middle] if len(ratios) % 2 else (ratios[middle - 1] + ratios[middle]) / 2


# Gate II mask overlaps are registered at one mask size p; the per-p values live in `GeometryStats`.
MASK_PERCENT: str = "10"


def _update_weighted(records: Sequence[TensorRecord], field: str) -> float | None:
    """Σ_t x_t·|U_t| / Σ_t |U_t| of the per-matrix share x_t = `field`[MASK_PERCENT], |U_t| the matrix's
    changed elements: the group's pooled share (each changed element counts once). Matrices where x_t
    is undefined (no update, no subspace, results without the field) are left out."""
    pooled = [(value, r.stats.changed) for r in records
              if (value := getattr(r.geometry, field).get(MASK_PERCENT)) is not None]
    total = sum(changed for _, changed in pooled)
    return sum(value * changed for value, changed in pooled) / total if total else None


def _over(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or not denominator else numerator / denominator


@register("matrix", f"low-|W0| overlap (p={MASK_PERCENT}%, update-weighted)", ".3f")
def low_magnitude_overlap(records: Sequence[TensorRecord]) -> float | None:
    """Σ_t |U_t ∩ M_low,t| / Σ_t |U_t|: share of the group's changed elements inside each matrix's
    bottom-p% |W0| mask (chance p/100)."""
    return _update_weighted(records, "low_magnitude_mask_overlap")


@register("matrix", f"low-|W0| stratified chance (p={MASK_PERCENT}%, update-weighted)", ".3f")
def low_magnitude_stratified_chance(records: Sequence[TensorRecord]) -> float | None:
    """Σ_t c_t·|U_t| / Σ_t |U_t|, c_t the matrix's magnitude-stratified chance (`geometry.stratified_chance`):
    the low-|W0| overlap expected if each matrix's flips were placed at random within each exponent bucket
    of |W0|, i.e. what precision alone explains."""
    return _update_weighted(records, "low_magnitude_mask_stratified_chance")


@register("matrix", f"low-|W0| overlap / stratified chance (p={MASK_PERCENT}%)", ".2f", headline=True)
def low_magnitude_overlap_over_stratified(records: Sequence[TensorRecord]) -> float | None:
    """low_magnitude_overlap / low_magnitude_stratified_chance: 1 when precision explains the whole
    overlap, > 1 when the update prefers small weights beyond what rounding does; None when either is
    undefined or the stratified chance is 0."""
    return _over(low_magnitude_overlap(records), low_magnitude_stratified_chance(records))


@register("matrix", f"principal overlap (p={MASK_PERCENT}%, update-weighted)", ".3f")
def principal_overlap(records: Sequence[TensorRecord]) -> float | None:
    """Σ_t |U_t ∩ M_princ,t| / Σ_t |U_t|: share of the group's changed elements inside each matrix's top-p%
    mask of |U0_k Σ0_k V0_kᵀ| (chance p/100)."""
    return _update_weighted(records, "principal_mask_overlap")


@register("matrix", f"principal stratified chance (p={MASK_PERCENT}%, update-weighted)", ".3f")
def principal_stratified_chance(records: Sequence[TensorRecord]) -> float | None:
    """Σ_t c_t·|U_t| / Σ_t |U_t| for the principal-weight mask (see `low_magnitude_stratified_chance`)."""
    return _update_weighted(records, "principal_mask_stratified_chance")


@register("matrix", f"principal overlap / stratified chance (p={MASK_PERCENT}%)", ".2f", headline=True)
def principal_overlap_over_stratified(records: Sequence[TensorRecord]) -> float | None:
    """principal_overlap / principal_stratified_chance: < 1 when the update avoids principal weights beyond
    what precision explains; None when either is undefined or the stratified chance is 0."""
    return _over(principal_overlap(records), principal_stratified_chance(records))


@register("matrix", "min spectral gap σ_k/σ_{k+1} of W0", ".3f")
def spectral_gap_min(records: Sequence[TensorRecord]) -> float | None:
    """min_t σ_k(W0_t)/σ_{k+1}(W0_t) over the group's matrices that have a (k+1)-th direction; None when
    none has (every subspace is then exactly defined)."""
    gaps = [r.geometry.spectral_gap for r in records if r.geometry.spectral_gap is not None]
    return min(gaps) if gaps else None


@register("matrix", "matrices with gap ≤ ‖Δ‖₂ (Wedin-flagged)", "d")
def gap_flagged_matrices(records: Sequence[TensorRecord]) -> int:
    """#{t : σ_k(W0_t) − σ_{k+1}(W0_t) ≤ ‖Δ_t‖_2}: matrices whose principal angles Wedin's bound
    sin θ ≤ ‖Δ‖_2/δ does not constrain (`GeometryStats.gap_flagged`)."""
    return sum(r.geometry.gap_flagged for r in records)


# --- overlap metrics (consistency of R runs' update masks) -----------------------------------------
# Run pairs are keyed "i-j" (i < j, run indices in the order given); p_r = |M_r| / n.

def _pair_jaccard_chance(c: OverlapCounts, i: int, j: int) -> float | None:
    p, q = c.updated[i] / c.numel, c.updated[j] / c.numel
    return _ratio(p * q, p + q - p * q)


@register("overlap", "update density per run")
def update_density(c: OverlapCounts) -> dict[str, float | None]:
    """p_r = |M_r| / n for each run r (key "r")."""
    return {str(r): _ratio(u, c.numel) for r, u in enumerate(c.updated)}


@register("overlap", "Jaccard |A∩B|/|A∪B|")
def jaccard(c: OverlapCounts) -> dict[str, float | None]:
    """Per run pair: |M_i ∩ M_j| / |M_i ∪ M_j|, |∪| = |M_i| + |M_j| − |∩|; None when neither run changed anything."""
    return {f"{i}-{j}": _ratio(both, c.updated[i] + c.updated[j] - both) for i, j, both in c.pairs()}


@register("overlap", "Jaccard chance pq/(p+q−pq)")
def jaccard_chance(c: OverlapCounts) -> dict[str, float | None]:
    """Per run pair: the Jaccard of independent Bernoulli masks of densities p, q: pq / (p + q − pq);
    None when p = q = 0 (or n = 0)."""
    if c.numel == 0:
        return {f"{i}-{j}": None for i, j, _ in c.pairs()}
    return {f"{i}-{j}": _pair_jaccard_chance(c, i, j) for i, j, _ in c.pairs()}


@register("overlap", "Jaccard / chance", ".2f")
def jaccard_over_chance(c: OverlapCounts) -> dict[str, float | None]:
    """Per run pair: Jaccard / its chance level; None where either is undefined or chance is 0."""
    observed, chance = jaccard(c), jaccard_chance(c)
    return {key: None if observed[key] is None or not chance[key] else observed[key] / chance[key] for key in observed}


@register("overlap", "overlap coefficient |A∩B|/min(|A|,|B|)")
def overlap_coefficient(c: OverlapCounts) -> dict[str, float | None]:
    """Per run pair: |M_i ∩ M_j| / min(|M_i|, |M_j|); None when one of the runs changed nothing."""
    return {f"{i}-{j}": _ratio(both, min(c.updated[i], c.updated[j])) for i, j, both in c.pairs()}


def _mean_defined(values: dict[str, float | None]) -> float | None:
    defined = [v for v in values.values() if v is not None]
    return sum(defined) / len(defined) if defined else None


@register("overlap", "mean Jaccard over run pairs", headline=True)
def mean_jaccard(c: OverlapCounts) -> float | None:
    """Unweighted mean of `jaccard` over run pairs (the Path Not Taken's mean off-diagonal J)."""
    return _mean_defined(jaccard(c))


@register("overlap", "mean Jaccard chance", headline=True)
def mean_jaccard_chance(c: OverlapCounts) -> float | None:
    """Unweighted mean of `jaccard_chance` over run pairs."""
    return _mean_defined(jaccard_chance(c))


@register("overlap", "mean Jaccard / mean chance", ".2f", headline=True)
def mean_jaccard_over_chance(c: OverlapCounts) -> float | None:
    """mean_jaccard / mean_jaccard_chance; None when either is undefined or the chance is 0."""
    observed, chance = mean_jaccard(c), mean_jaccard_chance(c)
    return None if observed is None or not chance else observed / chance


@register("overlap", "updated by all runs")
def updated_by_all_share(c: OverlapCounts) -> float | None:
    """|∩_r M_r| / n: share of elements every run changed."""
    return _ratio(c.updated_by_all, c.numel)


@register("overlap", "updated by no run")
def updated_by_none_share(c: OverlapCounts) -> float | None:
    """|∩_r M_r^c| / n: share of elements no run changed."""
    return _ratio(c.updated_by_none, c.numel)


# --- paper metrics (the Path Not Taken, RL Finetunes Small Subnetworks: their definitions) --------

@register("paper", "sparsity_bf16 (η-rule, Path Not Taken Def. 2.2)", headline=True)
def eta_sparsity(c: PaperCounts) -> float | None:
    """1 − changed_eta / n, unchanged iff |ŵ − w| ≤ η·max(|w|, |ŵ|), η = 1e-3 (±0 unchanged)."""
    return None if c.numel == 0 else 1.0 - c.changed_eta / c.numel


@register("paper", "η-rule unchanged but bits differ", ".2e")
def eta_forgiven_share(c: PaperCounts) -> float | None:
    """(changed_bitwise − changed_eta) / n: elements the η-rule calls unchanged though their bits differ
    (±0 flips, relative moves ≤ η: none for bf16 apart from ±0)."""
    return _ratio(c.changed_bitwise - c.changed_eta, c.numel)


@register("paper", "Δ == 0 share (Small Subnetworks)")
def subnetworks_sparsity(c: PaperCounts) -> float | None:
    """delta_zero / n with Δ computed in the stored dtype (element-weighted; the paper's layer figure is
    the unweighted mean of tensors, `PaperResult.subnetworks_layer_sparsity`)."""
    return _ratio(c.delta_zero, c.numel)


@register("paper", "NSS ‖σ(W1)−σ(W0)‖/‖σ(W0)‖", ".3e", headline=True)
def normalized_spectrum_shift(c: PaperCounts) -> float | None:
    """sqrt(Σ ‖σ(W1) − σ(W0)‖² / Σ ‖σ(W0)‖²) over all singular values (pooled over a group's matrices)."""
    return None if not c.spectrum_base_sq else math.sqrt(c.spectrum_shift_sq / c.spectrum_base_sq)


@register("paper", "matrix_rank(Δ)/min(m,n)", headline=True)
def update_rank_ratio(c: PaperCounts) -> float | None:
    """Σ matrix_rank(Δ) / Σ min(m, n) over the group's matrices (one matrix: its rank ratio)."""
    return _ratio(c.delta_rank, c.rank_capacity)


@register("paper", "update ∩ M_princ∩M_low^c share")
def principal_not_low_overlap(c: PaperCounts) -> float | None:
    """|U ∩ M_princ ∩ M_low^c| / |U|, U the bitwise update mask; None without updates."""
    return _ratio(c.updated_in_mask, c.updated)


@register("paper", "M_princ∩M_low^c chance")
def principal_not_low_chance(c: PaperCounts) -> float | None:
    """|M_princ ∩ M_low^c| / n over the group's matrices: the overlap an update placed at random would have."""
    return _ratio(c.mask_size, c.matrix_numel)


@register("paper", "overlap / chance (M_princ∩M_low^c)", ".2f", headline=True)
def principal_not_low_over_chance(c: PaperCounts) -> float | None:
    """principal_not_low_overlap / principal_not_low_chance; None when either is undefined or chance is 0."""
    overlap, chance = principal_not_low_overlap(c), principal_not_low_chance(c)
    return None if overlap is None or not chance else overlap / chance


# --- optimizer metrics (Adam's state: Gate II curvature for free; fp32 masters: Gate III per weight) --
# q keys are TOP_V_PERCENTS as "%g" ("1", "5", "10").

def _q_keys() -> list[str]:
    from dynamics.adam_curvature import TOP_V_PERCENTS

    return [f"{q:g}" for q in TOP_V_PERCENTS]


@register("optimizer", "share of ‖Δ‖² on top-q% v")
def v_top_share(c: OptimizerCounts) -> dict[str, float | None]:
    """Per q: Σ Δ² on the top-q% coordinates of Adam's v / Σ Δ², over 2-D weights; None without update energy."""
    return {q: _ratio(top, c.sum_sq_delta_matrix) for q, top in zip(_q_keys(), c.sum_sq_delta_top_v)}


@register("optimizer", "chance share |top-q%| / n")
def v_top_share_chance(c: OptimizerCounts) -> dict[str, float | None]:
    """Per q: |top-q%(v)| / n, the share a update spread at random would put there (≈ q/100)."""
    return {q: _ratio(count, c.matrix_numel) for q, count in zip(_q_keys(), c.top_v_count)}


@register("optimizer", "top-q% v share / chance", ".2f")
def v_top_share_over_chance(c: OptimizerCounts) -> dict[str, float | None]:
    """Per q: v_top_share / v_top_share_chance; None where either is undefined or chance is 0."""
    share, chance = v_top_share(c), v_top_share_chance(c)
    return {q: None if share[q] is None or not chance[q] else share[q] / chance[q] for q in share}


@register("optimizer", "top-1% v share / chance", ".2f", headline=True)
def v_top1_share_over_chance(c: OptimizerCounts) -> float | None:
    """v_top_share_over_chance at q = 1%."""
    return v_top_share_over_chance(c)[_q_keys()[0]]


@register("optimizer", "Spearman ρ(|Δ|, v)", ".3f", headline=True)
def v_spearman(c: OptimizerCounts) -> float | None:
    """Σ ρ_t·c_t / Σ c_t: the tensors' Spearman ρ(|Δ|, v) over changed elements, weighted by c_t changed."""
    return _ratio(c.spearman_weighted, c.spearman_weight)


@register("optimizer", "cos(Δ, −m̂/(√v̂+ε))", ".3f", headline=True)
def momentum_cosine(c: OptimizerCounts) -> float | None:
    """Σ Δ·d / sqrt(Σ Δ² · Σ d²), pooled over the group; None when Δ = 0 or d = 0."""
    denominator = math.sqrt(c.momentum_sq_delta * c.momentum_sq_direction)
    return _ratio(c.momentum_dot, denominator)


@register("optimizer", "moved and flipped in bf16")
def moved_flipped_share(c: OptimizerCounts) -> float | None:
    """moved_flipped / classified: master moved and the stored bf16 value changed."""
    return _ratio(c.moved_flipped, c.classified)


@register("optimizer", "moved, hidden by bf16")
def moved_hidden_share(c: OptimizerCounts) -> float | None:
    """moved_hidden / classified: master moved by less than the stored value's half-ULP (drift not carried over)."""
    return _ratio(c.moved_hidden, c.classified)


@register("optimizer", "unmoved")
def unmoved_share(c: OptimizerCounts) -> float | None:
    """unmoved / classified: master bits identical and stored value unchanged."""
    return _ratio(c.unmoved, c.classified)


@register("optimizer", "hidden share of moved masters", headline=True)
def hidden_of_moved(c: OptimizerCounts) -> float | None:
    """moved_hidden / (moved_hidden + moved_flipped); None when no master moved."""
    return _ratio(c.moved_hidden, c.moved_hidden + c.moved_flipped)


@register("optimizer", "next-step flip precision", ".3f", headline=True)
def flip_prediction_precision(c: OptimizerCounts) -> float | None:
    """|predicted ∩ next flips| / |predicted|; None when nothing is predicted to flip."""
    return _ratio(c.predicted_and_next, c.predicted_flips)


@register("optimizer", "next-step flip recall", ".3f", headline=True)
def flip_prediction_recall(c: OptimizerCounts) -> float | None:
    """|predicted ∩ next flips| / |next flips|; None when nothing flips at the next checkpoint."""
    return _ratio(c.predicted_and_next, c.next_flips)


# --- probe metrics ---------------------------------------------------------------------------------

@register("probe", "share of ‖Δ‖² on top-q% Fisher / chance", ".2f")
def fisher_share_over_chance(result: Any, q_percent: float) -> float | None:
    """share_top_q(q) / (q/100): how many times chance the update's energy on the top-q% Fisher coordinates is."""
    share = result.model["share_top_q"].get(f"{q_percent:g}")
    return None if share is None else share / (q_percent / 100)
