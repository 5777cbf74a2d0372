"""What a reader must know before trusting a diff's numbers, as one-line cautions.

The terminal summary prints them first and the reports put them beside their readings:
- inputs: tensors holding NaN/Inf (the element pass counts them; no geometry for them), shape mismatches
  (those tensors are not in any number);
- the matrix pass: a requested k clamped to min(m, n); a top-k block holding more than K_SHARE_CAUTION
  of the matrix (k²/(m·n): "principal" no longer means a small block, ρ_k's random baseline is large);
  matrices whose spectral gap δ = σ_k − σ_{k+1} of W0 is at most ‖Δ‖₂, where Wedin's bound
  sin θ ≤ ‖Δ‖₂/δ excludes no angle (`GeometryStats.gap_flagged`).
"""

from __future__ import annotations

from collections.abc import Sequence

from dynamics.geometry_options import K_SHARE_CAUTION
from dynamics.result import DiffResult, TensorRecord

_NAMES_SHOWN = 3


def _names(records: Sequence[TensorRecord]) -> str:
    more = f" and {len(records) - _NAMES_SHOWN} more" if len(records) > _NAMES_SHOWN else ""
    return ", ".join(r.name for r in records[:_NAMES_SHOWN]) + more


def nonfinite_records(result: DiffResult) -> list[TensorRecord]:
    """Records whose A or B side holds a NaN or an Inf."""
    return [r for r in result.records if r.stats.nan_a + r.stats.inf_a + r.stats.nan_b + r.stats.inf_b]


def input_cautions(result: DiffResult) -> list[str]:
    """NaN/Inf tensors by name (with their A and B counts) and shape mismatches."""
    lines = []
    bad = nonfinite_records(result)
    if bad:
        counts = "; ".join(f"{r.name} (NaN/Inf: A {r.stats.nan_a}/{r.stats.inf_a}, B {r.stats.nan_b}/{r.stats.inf_b})"
                           for r in bad[:_NAMES_SHOWN])
        more = f"; and {len(bad) - _NAMES_SHOWN} more" if len(bad) > _NAMES_SHOWN else ""
        lines.append(f"{len(bad)} tensors hold NaN/Inf: {counts}{more} (`--strict` makes this an error)")
    mismatched = result.unpaired.shape_mismatch
    if mismatched:
        shown = ", ".join(f"{m['name']} {m['shape_a']} vs {m['shape_b']}" for m in mismatched[:_NAMES_SHOWN])
        more = f" and {len(mismatched) - _NAMES_SHOWN} more" if len(mismatched) > _NAMES_SHOWN else ""
        lines.append(f"{len(mismatched)} tensors differ in shape and are not in these numbers: {shown}{more}")
    return lines


def geometry_cautions(records: Sequence[TensorRecord]) -> list[str]:
    """Clamped k, k²/(m·n) > K_SHARE_CAUTION, and Wedin-flagged spectral gaps among `records`."""
    measured = [r for r in records if r.geometry is not None]
    lines = []
    clamped = [r for r in measured if r.geometry.k_clamped]
    if clamped:
        lines.append(f"--rank-k exceeds min(m, n) on {len(clamped)} matrices ({_names(clamped)}): k = min(m, n) "
                     "there, so the 'top-k subspace' is the whole space")
    large = [r for r in measured if r.geometry.k ** 2 / (r.shape[0] * r.shape[1]) > K_SHARE_CAUTION]
    if large:
        share = max(r.geometry.k ** 2 / (r.shape[0] * r.shape[1]) for r in large)
        lines.append(f"the top-k block holds more than {K_SHARE_CAUTION:.0%} of the matrix on {len(large)} matrices "
                     f"(k²/(m·n) up to {share:.1%}; {_names(large)}): 'principal' is not a small block there and "
                     "ρ_k's random baseline is large; choose a smaller --rank-k or leave it to the default")
    flagged = [r for r in measured if r.geometry.gap_flagged]
    if flagged:
        gaps = [r.geometry.spectral_gap for r in flagged if r.geometry.spectral_gap is not None]
        least = f", smallest σ_k/σ_{{k+1}} {min(gaps):.4f}" if gaps else ""
        lines.append(f"{len(flagged)} of {len(measured)} matrices have a spectral gap σ_k − σ_{{k+1}} of W0 at most "
                     f"‖Δ‖₂ ({_names(flagged)}{least}): Wedin's bound sin θ ≤ ‖Δ‖₂/(σ_k − σ_{{k+1}}) excludes no "
                     "angle there, so their principal angles may be swaps of near-equal directions")
    return lines


def diff_cautions(result: DiffResult) -> list[str]:
    """Every caution of a diff: inputs first, then the matrix pass."""
    return input_cautions(result) + geometry_cautions(result.records)
