"""Update masks: which stored elements changed, bit-packed for storage."""

from __future__ import annotations

import numpy as np
import torch

from dynamics.kernels.elementwise_cpu import BITS_VIEW

_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)


def update_mask(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Boolean tensor, True where the stored bits of W0 and W1 differ (±0 and NaN payloads included)."""
    view = BITS_VIEW[a.dtype]
    return a.view(view) != b.view(view)


def pack_mask(mask: torch.Tensor) -> np.ndarray:
    """Row-major flags packed 8 per byte, most significant bit first (same layout as `np.packbits`);
    packing happens on the mask's device so only n/8 bytes travel to the host."""
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=flat.device)
    return (flat.view(-1, 8) * weights).sum(dim=1, dtype=torch.uint8).cpu().numpy()


def unpack_mask(packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of `pack_mask`: boolean array of `shape`."""
    n = int(np.prod(shape, dtype=np.int64))
    return np.unpackbits(packed, count=n).astype(bool).reshape(shape)


# A change rule: "bitwise" (stored bits differ), "eta" (the Path Not Taken's Def. 2.1 with η = 1e-3), or
# a float τ (|Δ| > τ, the absolute-tolerance rule of the published 1e-5 numbers).
ChangeRule = str | float
ETA: float = 1e-3


def changed_mask(a: torch.Tensor, b: torch.Tensor, rule: ChangeRule = "bitwise") -> torch.Tensor:
    """Boolean tensor of the elements `rule` counts as changed between W0 = a and W1 = b.

    - "bitwise": stored bits differ (`update_mask`; ±0 flips and NaN payload changes count).
    - "eta": not |W1 − W0| ≤ η·max(|W0|, |W1|) with η = ETA (Def. 2.1 of the Path Not Taken); ±0 pairs
      are unchanged, bit-identical elements are unchanged (NaN included), other NaN/Inf pairs changed.
      For bf16 values this equals bit-identity apart from ±0 (η < 2⁻⁹).
    - τ (float ≥ 0): not |W1 − W0| ≤ τ in float32; bit-identical elements unchanged, other non-finite
      pairs changed.
    """
    bitwise = update_mask(a, b)
    if rule == "bitwise":
        return bitwise
    a32, b32 = a.float(), b.float()
    distance = (b32 - a32).abs()
    if rule == "eta":
        within = distance <= ETA * torch.maximum(a32.abs(), b32.abs())
    elif isinstance(rule, (int, float)) and not isinstance(rule, bool) and rule >= 0:
        within = distance <= torch.tensor(float(rule), dtype=torch.float32)
    else:
        raise ValueError(f"change rule {rule!r}: expected 'bitwise', 'eta' or a tolerance τ ≥ 0")
    return bitwise & ~within


def parse_change_rule(text: str) -> ChangeRule:
    """The rule a CLI string names: "bitwise", "eta", or a number τ ("1e-5")."""
    if text in ("bitwise", "eta"):
        return text
    try:
        tolerance = float(text)
    except ValueError:
        raise ValueError(f"change rule {text!r}: expected bitwise, eta or a tolerance such as 1e-5") from None
    if not tolerance >= 0:
        raise ValueError(f"change rule {text!r}: a tolerance must be ≥ 0")
    return tolerance


def rule_name(rule: ChangeRule) -> str:
    """"bitwise", "eta" or the tolerance as "abs<τ>" (e.g. "abs1e-05"): a JSON-friendly label."""
    return rule if isinstance(rule, str) else f"abs{rule:g}"
