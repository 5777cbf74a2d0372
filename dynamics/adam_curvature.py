"""Gate II from Adam's state, per tensor: where the update's energy sits on v's coordinates, and how well
the last steps' momentum direction explains it.

v = exp_avg_sq, an EMA of g², is a running diagonal empirical Fisher under the training distribution.
For a 2-D weight with Δ = W1 − W0 (float64):
- top-q% share: Σ_{i ∈ top-q%(v)} Δ_i² / Σ_i Δ_i², top-q% = the round(q/100·n) largest v (ties by
  position, `dynamics.selection.top_count`), against the chance share |top| / n ≈ q/100;
- Spearman ρ(|Δ|, v) over changed elements (Δ ≠ 0): Pearson correlation of average ranks; None with
  fewer than two changed elements or when either ranking is constant.
For every tensor with a state, the momentum direction d = −m̂/(√v̂ + ε) (m̂ = m/(1−β1^t), v̂ = v/(1−β2^t),
t the steps taken): Σ Δ·d, Σ Δ², Σ d² (the pooled cosine is registered in `dynamics.metrics`). Weight
decay is not part of d. Δ = 0 or d = 0 give a cosine of None.
"""

from __future__ import annotations

import torch

from dynamics.checkpoints.adam_state import AdamHyper
from dynamics.selection import budget_count, top_count

TOP_V_PERCENTS: tuple[float, ...] = (1.0, 5.0, 10.0)


def adam_direction(m: torch.Tensor, v: torch.Tensor, hyper: AdamHyper) -> torch.Tensor:
    """−m̂/(√v̂ + ε) in float64, with torch AdamW's bias corrections (t = 0: zeros)."""
    if hyper.step == 0:
        return torch.zeros_like(m, dtype=torch.float64)
    m_hat = m.double() / (1 - hyper.beta1 ** hyper.step)
    v_hat = v.double() / (1 - hyper.beta2 ** hyper.step)
    return -m_hat / (v_hat.sqrt() + hyper.eps)


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of a 1-D tensor, tied values sharing the mean of their ranks (float64)."""
    _, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    return ((ends - counts.double() + 1 + ends) / 2)[inverse]


def spearman(x: torch.Tensor, y: torch.Tensor) -> float | None:
    """Spearman ρ of two 1-D tensors (average ranks); None for fewer than two values or a constant ranking."""
    if x.numel() < 2:
        return None
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = float((rx.square().sum() * ry.square().sum()).sqrt())
    return float((rx * ry).sum()) / denominator if denominator else None


def top_v_counts(delta: torch.Tensor, v: torch.Tensor) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """(|top-q%(v)|, Σ Δ² on them) for q in TOP_V_PERCENTS."""
    sq = delta.double().square()
    counts, sums = [], []
    for q in TOP_V_PERCENTS:
        mask = top_count(v, budget_count(q / 100, v.numel()))
        counts.append(int(mask.sum()))
        sums.append(float(sq[mask].sum()))
    return tuple(counts), tuple(sums)
