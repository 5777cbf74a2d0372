"""CPU twin of the fused elementwise kernel: `ElementStats` of (W0, W1) with torch, in chunks.

A 2-D tensor is processed a block of whole rows at a time (row/column flags need rows), any
other rank as flat chunks of CHUNK_ELEMENTS, small enough that a chunk and its temporaries stay
in cache (a row longer than that is still taken whole). Host memory is bounded by a few chunks.

Per chunk, two paths give the same counters:
- fast (every W0 and W1 finite, the normal case): over the whole chunk only the changed mask,
  Σ W0², Σ W1² and the row/column flags; every other counter is a function of the changed
  elements alone (an unchanged finite pair has Δ = 0: within every tolerance, ULP distance 0),
  so those are gathered once and the tolerance counts, the ULP histogram (a lookup table and one
  `bincount` for 16-bit dtypes) and the Δ sums run on them only;
- general (a NaN/Inf somewhere in the chunk): every counter from its definition over the chunk.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TypeVar

import numpy as np
import torch

from dynamics.element_stats import (
    ABS_TOLERANCES,
    REL_EPSILON,
    REL_TOLERANCES,
    ULP_BUCKETS,
    ElementStats,
)

CHUNK_ELEMENTS = 1 << 18
T = TypeVar("T")

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Same-width integer dtype whose bits a float tensor is compared and ordered by.
BITS_VIEW = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}
_ORD_DTYPE = {torch.int32: torch.int64, torch.int16: torch.int32}
# Bins of the ULP-distance histogram beyond its buckets: distance 0 (±0 flips, dropped afterwards)
# and sign crossings (W0·W1 < 0, kept as `sign_crossings`).
_ZERO_DISTANCE_BIN = ULP_BUCKETS
_SIGN_CROSSING_BIN = ULP_BUCKETS + 1


def ordinal(bits: torch.Tensor) -> torch.Tensor:
    """Order-preserving integer of sign-magnitude float bits: x ≥ 0 → x, x < 0 → INT_MIN − x.

    ±0 both map to 0, so ULP distance |ord(W1) − ord(W0)| counts representable values between.
    Computed branch-free in the wider integer: with s = x >> (width − 1) (0 or −1) and m the
    magnitude bits, ord = (m ^ s) − s = ±m.
    """
    wide = bits.to(_ORD_DTYPE[bits.dtype])
    sign = wide >> (8 * wide.element_size() - 1)
    return ((wide & torch.iinfo(bits.dtype).max) ^ sign) - sign


def ulp_bucket(distance: torch.Tensor) -> torch.Tensor:
    """Bucket index bitlength(d − 1) of ULP distances d ≥ 1: 1 → 0, 2 → 1, 3–4 → 2, 5–8 → 3."""
    _, exponent = torch.frexp((distance - 1).to(torch.float64))
    return exponent.to(torch.int64)


_BUCKET_TABLES: dict[torch.device, torch.Tensor] = {}


def _bucket_table(device: torch.device) -> torch.Tensor:
    """bucket[d] for every 16-bit ULP distance d in 0..65535; d = 0 (a ±0 flip) → _ZERO_DISTANCE_BIN."""
    table = _BUCKET_TABLES.get(device)
    if table is None:
        distance = torch.arange(1 << 16, dtype=torch.int64, device=device)
        table = torch.where(distance == 0, _ZERO_DISTANCE_BIN, ulp_bucket(distance))
        _BUCKET_TABLES[device] = table
    return table


def sign_crossing(bits_a: torch.Tensor, bits_b: torch.Tensor) -> torch.Tensor:
    """W0·W1 < 0 from the stored bits: sign bits differ and neither magnitude is zero (±0 excluded)."""
    magnitude = torch.iinfo(bits_a.dtype).max
    return ((bits_a ^ bits_b) < 0) & ((bits_a & magnitude) != 0) & ((bits_b & magnitude) != 0)


def _distance_histogram(bits_a: torch.Tensor, bits_b: torch.Tensor) -> torch.Tensor:
    """ULP-distance bucket counts of element pairs (finite): bin _ZERO_DISTANCE_BIN for distance 0,
    _SIGN_CROSSING_BIN for sign crossings (whatever their distance)."""
    distance = (ordinal(bits_b) - ordinal(bits_a)).abs()
    if bits_a.dtype == torch.int16:
        bucket = _bucket_table(bits_a.device).index_select(0, distance)
    else:
        bucket = torch.where(distance == 0, _ZERO_DISTANCE_BIN, ulp_bucket(distance))
    bucket = torch.where(sign_crossing(bits_a, bits_b), _SIGN_CROSSING_BIN, bucket)
    if bucket.device.type == "cpu":  # NumPy's bincount: ~5× torch's on the CPU
        return torch.from_numpy(np.bincount(bucket.numpy(), minlength=ULP_BUCKETS + 2))
    return torch.bincount(bucket, minlength=ULP_BUCKETS + 2)


def _rounded_bits(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype).view(torch.int16)


def _sum_sq(x: torch.Tensor) -> float:
    """Σ x² in float64 (exact squares of 16/32-bit floats; float32 squares overflow above 1.8e19)."""
    x64 = x.reshape(-1).to(torch.float64)
    return float(torch.dot(x64, x64))


def _tolerance_excess(abs_delta: torch.Tensor, scale: torch.Tensor) -> tuple[list[int], list[int]]:
    """How many of the elements exceed each absolute tolerance (|Δ| > τ) and each relative one
    (|Δ| > fl32(τ·scale)), the thresholds rounded to float32 as both twins compare them."""
    over_abs = [int(torch.count_nonzero(abs_delta > t)) for t in _f32(ABS_TOLERANCES, abs_delta.device)]
    over_rel = [int(torch.count_nonzero(abs_delta > scale * t)) for t in _f32(REL_TOLERANCES, abs_delta.device)]
    return over_abs, over_rel


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Flat indices of the True elements of `mask` (NumPy's flatnonzero on the CPU: ~8× torch's)."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.reshape(-1).nonzero().squeeze(1)


def _fast_counts(a: torch.Tensor, b: torch.Tensor, changed: torch.Tensor, stored: torch.dtype,
                 sum_sq_a: float) -> dict | None:
    """Counters of a chunk whose W0 are all finite, from its changed elements only; None when a changed
    W1 is NaN/Inf (the general path takes the chunk).

    Unchanged elements add n to finite_pairs and to every within_* count and nothing else, and W1 = W0
    there, so Σ W1² = Σ W0² + Σ_changed (W1² − W0²); where that cancels to below 1e-3·Σ W0² (W1 much
    smaller than W0) Σ W1² is summed directly instead, keeping float64 precision relative to it."""
    n = a.numel()
    where = _positions(changed)
    int_view = BITS_VIEW[stored]
    bits_a = a.reshape(-1).view(int_view).index_select(0, where)
    bits_b = b.reshape(-1).view(int_view).index_select(0, where)
    a32, b32 = bits_a.view(stored).to(torch.float32), bits_b.view(stored).to(torch.float32)
    changed_sq_b = _sum_sq(b32)
    if not changed_sq_b < float("inf"):
        return None
    sum_sq_b = sum_sq_a + (changed_sq_b - _sum_sq(a32))
    if sum_sq_b < 1e-3 * sum_sq_a:
        sum_sq_b = _sum_sq(b)
    delta = b32 - a32
    abs_delta = delta.abs()
    over_abs, over_rel = _tolerance_excess(abs_delta, torch.clamp(a32.abs(), min=REL_EPSILON))
    histogram = _distance_histogram(bits_a, bits_b).tolist()
    counts = {
        "numel": n,
        "changed": where.numel(),
        "changed_signed_zero": histogram[_ZERO_DISTANCE_BIN],
        "changed_nonfinite": 0, "nan_a": 0, "nan_b": 0, "inf_a": 0, "inf_b": 0,
        "finite_pairs": n,
        "ulp_histogram": tuple(histogram[:ULP_BUCKETS]),
        "sign_crossings": histogram[_SIGN_CROSSING_BIN],
        "within_abs": tuple(n - c for c in over_abs),
        "within_rel": tuple(n - c for c in over_rel),
        "hidden_by_bf16": None,
        "hidden_by_fp16": None,
        "sum_sq_delta": _sum_sq(delta),
        "sum_abs_delta": float(torch.sum(abs_delta, dtype=torch.float64)),
        "sum_sq_a": sum_sq_a,
        "sum_sq_b": sum_sq_b,
        "max_abs_delta": float(abs_delta.max()) if abs_delta.numel() else 0.0,
    }
    if stored == torch.float32:
        moved = abs_delta != 0  # a changed finite pair has Δ = 0 only as a ±0 flip
        for key, low in (("hidden_by_bf16", torch.bfloat16), ("hidden_by_fp16", torch.float16)):
            same = _rounded_bits(a32, low) == _rounded_bits(b32, low)
            counts[key] = int((moved & same).sum())
    return counts


def _general_counts(a: torch.Tensor, b: torch.Tensor, changed: torch.Tensor, stored: torch.dtype) -> dict:
    """Counters of a chunk from their definitions, NaN and Inf included."""
    int_view = BITS_VIEW[stored]
    bits_a, bits_b = a.view(int_view), b.view(int_view)
    a32, b32 = a.to(torch.float32), b.to(torch.float32)
    finite_a, finite_b = torch.isfinite(a32), torch.isfinite(b32)
    finite = finite_a & finite_b
    both_zero = (a32 == 0) & (b32 == 0)
    moved = changed & finite & ~both_zero

    delta = torch.where(finite, b32 - a32, 0.0)
    abs_delta = delta.abs()
    crossing = moved & sign_crossing(bits_a, bits_b)
    distance = (ordinal(bits_b) - ordinal(bits_a)).abs()[moved & ~crossing]
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
        "sign_crossings": int(crossing.sum()),
        "within_abs": tuple(
            int((finite & (abs_delta <= t)).sum()) for t in _f32(ABS_TOLERANCES, a.device)
        ),
        "within_rel": tuple(
            int((finite & (abs_delta <= t * rel_scale)).sum()) for t in _f32(REL_TOLERANCES, a.device)
        ),
        "hidden_by_bf16": None,
        "hidden_by_fp16": None,
        "sum_sq_delta": _sum_sq(delta),
        "sum_abs_delta": float(torch.sum(abs_delta, dtype=torch.float64)),
        "sum_sq_a": _sum_sq(torch.where(finite, a32, 0.0)),
        "sum_sq_b": _sum_sq(torch.where(finite, b32, 0.0)),
        "max_abs_delta": float(abs_delta.max()) if abs_delta.numel() else 0.0,
    }
    if stored == torch.float32:
        for key, low in (("hidden_by_bf16", torch.bfloat16), ("hidden_by_fp16", torch.float16)):
            same = _rounded_bits(a32, low) == _rounded_bits(b32, low)
            counts[key] = int((moved & same).sum())
    return counts


def _chunk_stats(a: torch.Tensor, b: torch.Tensor, stored: torch.dtype) -> tuple[dict, torch.Tensor]:
    """Counters of a (rows, cols) block or flat chunk; also returns the changed mask for row/column flags.

    Σ W0² over the chunk is finite exactly when every W0 is (a square of a 16- or 32-bit float is
    < 1.2e77 in float64), which picks the fast path without a separate scan."""
    int_view = BITS_VIEW[stored]
    changed = a.view(int_view) != b.view(int_view)
    sum_sq_a = _sum_sq(a)
    counts = _fast_counts(a, b, changed, stored, sum_sq_a) if sum_sq_a < float("inf") else None
    return (counts if counts is not None else _general_counts(a, b, changed, stored)), changed


_TOLERANCE_SCALARS: dict[tuple[tuple[float, ...], torch.device], list[torch.Tensor]] = {}


def _f32(values: tuple[float, ...], device: torch.device) -> list[torch.Tensor]:
    """Tolerances as float32 scalars, so both twins compare against the same rounded numbers (made once)."""
    key = (values, device)
    if key not in _TOLERANCE_SCALARS:
        _TOLERANCE_SCALARS[key] = [torch.tensor(v, dtype=torch.float32, device=device) for v in values]
    return _TOLERANCE_SCALARS[key]


def element_stats_cpu(a: torch.Tensor, b: torch.Tensor) -> ElementStats:
    """`ElementStats` of W0 = a, W1 = b (same shape and dtype, float32/bf16/fp16), on the CPU.

    Zero-size tensors give all-zero counters. Row/column fields are filled for 2-D tensors.
    Other ranks are processed as flat chunks of CHUNK_ELEMENTS. Chunks run on `_chunk_map`'s
    threads. The code is device-agnostic, so the same torch also runs on CUDA tensors (bench/
    uses it as the multi-pass baseline).
    """
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"element_stats needs equal shape and dtype, got {a.shape}/{a.dtype} vs {b.shape}/{b.dtype}")
    if a.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"element_stats supports {SUPPORTED_DTYPES}, got {a.dtype}")
    total = ElementStats.zero()
    if a.dtype == torch.float32:
        total = replace(total, hidden_by_bf16=0, hidden_by_fp16=0)
    matrix = a.dim() == 2
    flat_a, flat_b = (a, b) if matrix else (a.reshape(-1), b.reshape(-1))
    length = flat_a.shape[0]
    step = max(1, CHUNK_ELEMENTS // max(a.shape[1], 1)) if matrix else CHUNK_ELEMENTS

    def chunk(start: int) -> tuple[dict, tuple[torch.Tensor, torch.Tensor] | None]:
        stop = min(length, start + step)
        counts, changed = _chunk_stats(flat_a[start:stop].contiguous(), flat_b[start:stop].contiguous(), a.dtype)
        flags = (changed.any(dim=1), changed.any(dim=0)) if matrix and changed.numel() else None
        return counts, flags

    results = _chunk_map(chunk, range(0, length, step), a.device)
    for counts, _ in results:
        total = total + replace(ElementStats.zero(), **counts)
    if not matrix:
        return total
    rows, cols = a.shape
    row_changed = torch.zeros(rows, dtype=torch.bool, device=a.device)
    col_changed = torch.zeros(cols, dtype=torch.bool, device=a.device)
    for start, (_, flags) in zip(range(0, length, step), results):
        if flags is not None:
            row_changed[start: start + flags[0].numel()] = flags[0]
            col_changed |= flags[1]
    return replace(
        total, rows=rows, cols=cols,
        unchanged_rows=int((~row_changed).sum()), unchanged_cols=int((~col_changed).sum()),
    )


_THREADS = threading.Lock()


def _chunk_map(fn: Callable[[int], T], starts: range, device: torch.device) -> list[T]:
    """`fn` over `starts`; on the CPU with several torch threads, one chunk per thread at a time.

    Each op on a cache-sized chunk is too short for torch's intra-op pool: its fork/join costs more
    than it saves, and 20× more when the cores are shared with other processes. So while the chunks
    run, torch uses one intra-op thread and the chunks themselves go to torch.get_num_threads()
    threads (torch ops release the GIL). Restored afterwards; a concurrent call runs sequentially.
    """
    workers = torch.get_num_threads()
    if device.type != "cpu" or workers < 2 or len(starts) < 2 or not _THREADS.acquire(blocking=False):
        return [fn(start) for start in starts]
    try:
        torch.set_num_threads(1)
        with ThreadPoolExecutor(max_workers=min(workers, len(starts)), thread_name_prefix="dynamics-cpu") as pool:
            return list(pool.map(fn, starts))
    finally:
        torch.set_num_threads(workers)
        _THREADS.release()
