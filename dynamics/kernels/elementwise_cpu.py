"""CPU twin of the fused elementwise kernel: `ElementStats` of (W0, W1) with torch, in chunks.

A 2-D tensor is processed a block of whole rows at a time (row/column flags need rows), any
other rank as flat chunks, so host memory stays bounded by CHUNK_ELEMENTS per buffer (a row
longer than that is still taken whole).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from dynamics.element_stats import (
    ABS_TOLERANCES,
    REL_EPSILON,
    REL_TOLERANCES,
    ULP_BUCKETS,
    ElementStats,
)

CHUNK_ELEMENTS = 1 << 22

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Same-width integer dtype whose bits a float tensor is compared and ordered by.
BITS_VIEW = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}
_ORD_DTYPE = {torch.int32: torch.int64, torch.int16: torch.int32}


def ordinal(bits: torch.Tensor) -> torch.Tensor:
    """Order-preserving integer of sign-magnitude float bits: x ≥ 0 → x, x < 0 → INT_MIN − x.

    ±0 both map to 0, so ULP distance |ord(W1) − ord(W0)| counts representable values between.
    """
    int_min = torch.iinfo(bits.dtype).min
    wide = bits.to(_ORD_DTYPE[bits.dtype])
    return torch.where(wide < 0, int_min - wide, wide)


def ulp_bucket(distance: torch.Tensor) -> torch.Tensor:
    """Bucket index bitlength(d − 1) of ULP distances d ≥ 1: 1 → 0, 2 → 1, 3–4 → 2, 5–8 → 3."""
    _, exponent = torch.frexp((distance - 1).to(torch.float64))
    return exponent.to(torch.int64)


def _rounded_bits(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype).view(torch.int16)


def _chunk_stats(a: torch.Tensor, b: torch.Tensor, stored: torch.dtype) -> tuple[dict, torch.Tensor]:
    """Counters of a (rows, cols) block; also returns the changed mask for row/column flags."""
    int_view = BITS_VIEW[stored]
    bits_a, bits_b = a.view(int_view), b.view(int_view)
    changed = bits_a != bits_b
    a32, b32 = a.to(torch.float32), b.to(torch.float32)
    finite_a, finite_b = torch.isfinite(a32), torch.isfinite(b32)
    finite = finite_a & finite_b
    both_zero = (a32 == 0) & (b32 == 0)
    moved = changed & finite & ~both_zero

    delta = torch.where(finite, b32 - a32, 0.0)
    abs_delta = delta.abs()
    distance = (ordinal(bits_b) - ordinal(bits_a)).abs()[moved]
    ulp_histogram = torch.bincount(ulp_bucket(distance), minlength=ULP_BUCKETS)

    rel_scale = torch.clamp(a32.abs(), min=REL_EPSILON)
    counts = {
        "numel": a.numel(),
        "changed": int(changed.sum()),
        "changed_signed_zero": int((changed & both_zero).sum()),
        "changed_nonfinite": int((changed & ~finite).sum()),
        "nan_a": int(torch.isnan(a32).sum()),
        "nan_b": int(torch.isnan(b32).sum()),
        "inf_a": int(torch.isinf(a32).sum()),
        "inf_b": int(torch.isinf(b32).sum()),
        "finite_pairs": int(finite.sum()),
        "ulp_histogram": tuple(int(c) for c in ulp_histogram[:ULP_BUCKETS]),
        "within_abs": tuple(int((finite & (abs_delta <= t)).sum()) for t in _f32(ABS_TOLERANCES)),
        "within_rel": tuple(
            int((finite & (abs_delta <= t * rel_scale)).sum()) for t in _f32(REL_TOLERANCES)
        ),
        "hidden_by_bf16": None,
        "hidden_by_fp16": None,
        # Squares in float64: float32 squares overflow for finite |x| > 1.8e19.
        "sum_sq_delta": float(torch.sum(delta.double().square())),
        "sum_abs_delta": float(torch.sum(abs_delta, dtype=torch.float64)),
        "sum_sq_a": float(torch.sum(torch.where(finite, a32, 0.0).double().square())),
        "sum_sq_b": float(torch.sum(torch.where(finite, b32, 0.0).double().square())),
        "max_abs_delta": float(abs_delta.max()) if abs_delta.numel() else 0.0,
    }
    if stored == torch.float32:
        for key, low in (("hidden_by_bf16", torch.bfloat16), ("hidden_by_fp16", torch.float16)):
            same = _rounded_bits(a32, low) == _rounded_bits(b32, low)
            counts[key] = int((moved & same).sum())
    return counts, changed


def _f32(values: tuple[float, ...]) -> list[torch.Tensor]:
    """Tolerances as float32 scalars, so both twins compare against the same rounded numbers."""
    return [torch.tensor(v, dtype=torch.float32) for v in values]


def element_stats_cpu(a: torch.Tensor, b: torch.Tensor) -> ElementStats:
    """`ElementStats` of W0 = a, W1 = b (same shape and dtype, float32/bf16/fp16), on the CPU.

    Zero-size tensors give all-zero counters. Row/column fields are filled for 2-D tensors.
    Other ranks are processed as flat chunks of CHUNK_ELEMENTS. The code is device-agnostic, so
    the same multi-pass torch also runs on CUDA tensors (bench/ uses it as the baseline).
    """
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"element_stats needs equal shape and dtype, got {a.shape}/{a.dtype} vs {b.shape}/{b.dtype}")
    if a.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"element_stats supports {SUPPORTED_DTYPES}, got {a.dtype}")
    total = ElementStats.zero()
    if a.dtype == torch.float32:
        total = replace(total, hidden_by_bf16=0, hidden_by_fp16=0)
    if a.dim() != 2:
        flat_a, flat_b = a.reshape(-1), b.reshape(-1)
        for start in range(0, flat_a.numel(), CHUNK_ELEMENTS):
            stop = min(flat_a.numel(), start + CHUNK_ELEMENTS)
            counts, _ = _chunk_stats(flat_a[start:stop].contiguous(), flat_b[start:stop].contiguous(), a.dtype)
            total = total + replace(ElementStats.zero(), **counts)
        return total
    rows, cols = a.shape
    row_changed = torch.zeros(rows, dtype=torch.bool, device=a.device)
    col_changed = torch.zeros(cols, dtype=torch.bool, device=a.device)
    rows_per_chunk = max(1, CHUNK_ELEMENTS // max(cols, 1))
    for start in range(0, rows, rows_per_chunk):
        stop = min(rows, start + rows_per_chunk)
        counts, changed = _chunk_stats(a[start:stop].contiguous(), b[start:stop].contiguous(), a.dtype)
        total = total + replace(ElementStats.zero(), **counts)
        if changed.numel():
            row_changed[start:stop] = changed.any(dim=1)
            col_changed |= changed.any(dim=0)
    return replace(
        total, rows=rows, cols=cols,
        unchanged_rows=int((~row_changed).sum()), unchanged_cols=int((~col_changed).sum()),
    )
