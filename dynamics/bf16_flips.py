"""Gate III weight by weight: which fp32-master updates bf16 storage shows, which it hides, and which it
will show after the next step.

Half-ULP units: for a stored bf16 value s and a real value x, u(s, x) = |x − s| / (g/2), g the gap from s
to its bf16 neighbour on x's side (below a power of two that gap is half the one above). x rounds to s
when u < 1, to the neighbour when u > 1; at u = 1 exactly round-to-nearest-even keeps s if its last
mantissa bit is 0. Flips are decided by the rounding itself (`x.to(torch.bfloat16)`), u only measures.

Per element, with masters a (step t), b (step t+1) in float32 and stored bf16 sa, sb:
moved = bits(a) ≠ bits(b); flipped = bits(sa) ≠ bits(sb); moved_flipped, moved_hidden (moved, not
flipped), unmoved (neither), flipped_unmoved (a stored copy that changed while its master did not: 0
when the stored weights are the masters' rounding). The accumulated drift of a hidden element is
u(sb, b), binned in tenths of [0, 1] plus one bin for u > 1.

Next-step prediction from Adam's state at t+1: b' = b·(1 − lr·λ) − lr·m̂/(√v̂ + ε) in float32 (torch
AdamW's step with the stored m, v standing in for the next ones); predicted flip = bits(bf16(b')) ≠
bits(sb); actual flip = bits(sc) ≠ bits(sb) for the next stored weights sc.
"""

from __future__ import annotations

import torch

from dynamics.checkpoints.adam_state import AdamHyper

DRIFT_BINS = 11  # tenths of [0, 1], then u > 1


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.view(torch.int16) if x.dtype == torch.bfloat16 else x.view(torch.int32)


def _bf16_from_key(key: torch.Tensor) -> torch.Tensor:
    """Inverse of the order-preserving key k = bits for s ≥ +0, −(bits & 0x7fff) for negative s."""
    bits = torch.where(key >= 0, key, (-key) | 0x8000)
    return bits.to(torch.int16).view(torch.bfloat16)


def half_ulp_units(stored: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """u(s, x) of the module docstring, float64; 0 where x == s. `stored` bf16, `x` any float dtype."""
    bits = stored.view(torch.int16).to(torch.int32)
    key = torch.where(bits >= 0, bits, -(bits & 0x7FFF))
    s = stored.double()
    target = x.double()
    neighbour = _bf16_from_key(torch.where(target > s, key + 1, key - 1)).double()
    gap = (neighbour - s).abs()
    return torch.where(target == s, torch.zeros_like(s), (target - s).abs() / (gap / 2))


def classify(a: torch.Tensor, b: torch.Tensor, sa: torch.Tensor, sb: torch.Tensor) -> dict[str, torch.Tensor]:
    """Bool masks moved_flipped, moved_hidden, unmoved, flipped_unmoved (see the module docstring)."""
    moved = _bits(a) != _bits(b)
    flipped = _bits(sa) != _bits(sb)
    return {"moved_flipped": moved & flipped, "moved_hidden": moved & ~flipped,
            "unmoved": ~moved & ~flipped, "flipped_unmoved": ~moved & flipped}


def drift_histogram(units: torch.Tensor) -> tuple[int, ...]:
    """Counts of u in [0, .1), …, [.9, 1] and (1, ∞) (non-finite u in the last bin)."""
    bins = torch.where(units > 1, DRIFT_BINS - 1, (units * 10).floor().clamp(max=9)).nan_to_num(DRIFT_BINS - 1)
    return tuple(int(c) for c in torch.bincount(bins.long().reshape(-1), minlength=DRIFT_BINS))


def predicted_next(master: torch.Tensor, m: torch.Tensor, v: torch.Tensor, hyper: AdamHyper) -> torch.Tensor:
    """The next fp32 master if the next step's bias-corrected moments m̂, v̂ equal the stored ones (exact for a
    constant gradient): torch AdamW's update in float32, decoupled decay, then
    p −= lr/(1−β1^t) · m / (√v/√(1−β2^t) + ε), t the steps taken, lr the group's (already the next step's)."""
    bias1 = 1 - hyper.beta1 ** hyper.step
    bias2_sqrt = (1 - hyper.beta2 ** hyper.step) ** 0.5
    p = master.float() * (1 - hyper.lr * hyper.weight_decay)
    return p - (hyper.lr / bias1) * m.float() / (v.float().sqrt() / bias2_sqrt + hyper.eps)


def predicted_flips(master: torch.Tensor, stored: torch.Tensor, m: torch.Tensor, v: torch.Tensor,
                    hyper: AdamHyper) -> torch.Tensor:
    """Bool mask: the predicted next master rounds to another bf16 value than the stored one."""
    return _bits(predicted_next(master, m, v, hyper).to(torch.bfloat16)) != _bits(stored)
