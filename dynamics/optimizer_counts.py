"""`OptimizerCounts`: the additive counters behind the registered optimizer metrics (needs "optimizer")."""

from __future__ import annotations

from dataclasses import dataclass, fields

from dynamics.adam_curvature import TOP_V_PERCENTS
from dynamics.bf16_flips import DRIFT_BINS

_NO_Q = (0,) * len(TOP_V_PERCENTS)


@dataclass(frozen=True)
class OptimizerCounts:
    """Counters of one tensor, or summed over a group (tuples elementwise).

    Gate II (2-D weights with an Adam state; `dynamics.adam_curvature`): matrices, matrix_numel,
    sum_sq_delta_matrix = Σ Δ²; per q of TOP_V_PERCENTS: top_v_count = |top-q%(v)|, sum_sq_delta_top_v =
    Σ Δ² on it; spearman_weighted = Σ ρ_t·c_t and spearman_weight = Σ c_t over matrices with a defined ρ
    (c_t = changed elements). Momentum (every tensor with a state): with_state elements, momentum_dot =
    Σ Δ·d, momentum_sq_delta = Σ Δ², momentum_sq_direction = Σ d², d = −m̂/(√v̂+ε).
    Gate III (fp32 masters; `dynamics.bf16_flips`): classified elements, moved_flipped, moved_hidden,
    unmoved, flipped_unmoved; hidden_drift_histogram of the hidden ones in half-ULP units; where the next
    checkpoint and a state exist: predicted_numel elements, predicted_flips, next_flips, predicted_and_next.
    """

    numel: int = 0
    matrices: int = 0
    matrix_numel: int = 0
    sum_sq_delta_matrix: float = 0.0
    top_v_count: tuple[int, ...] = _NO_Q
    sum_sq_delta_top_v: tuple[float, ...] = _NO_Q
    spearman_weighted: float = 0.0
    spearman_weight: int = 0
    with_state: int = 0
    momentum_dot: float = 0.0
    momentum_sq_delta: float = 0.0
    momentum_sq_direction: float = 0.0
    classified: int = 0
    moved_flipped: int = 0
    moved_hidden: int = 0
    unmoved: int = 0
    flipped_unmoved: int = 0
    hidden_drift_histogram: tuple[int, ...] = (0,) * DRIFT_BINS
    predicted_numel: int = 0
    predicted_flips: int = 0
    next_flips: int = 0
    predicted_and_next: int = 0

    def __add__(self, other: OptimizerCounts) -> OptimizerCounts:
        summed = {}
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            summed[f.name] = tuple(x + y for x, y in zip(mine, theirs)) if isinstance(mine, tuple) else mine + theirs
        return OptimizerCounts(**summed)

    @classmethod
    def from_row(cls, row: dict) -> OptimizerCounts:
        return cls(**{f.name: tuple(row[f.name]) if isinstance(f.default, tuple) else row[f.name] for f in fields(cls)})
