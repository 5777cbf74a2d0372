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
