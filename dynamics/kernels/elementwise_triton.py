"""Fused Triton kernel: `ElementStats` of (W0, W1) in one read of each element.

Layout. The pair is viewed as (rows, cols) — 2-D as is, other ranks as (prod(shape[:-1]), last)
without row/column statistics — and cut into BR×BC tiles, numbered column strip by column strip.
A persistent grid of programs each takes a contiguous run of tiles, so a program walks down a
column strip: column "any changed" flags accumulate per lane and are written once per strip,
row flags once per tile (plain stores of 1: racing writers all write the same byte).

Fast path. Tiles are processed in groups of GROUP (≤ 12), four per loop step with two tiles'
loads always in flight. Each lane keeps packed counters: ULP-bucket one-hots in 4-bit fields of
int32 words, and tolerance / changed indicators as 0-or-1 floats (a saturated difference, see
`_sat01`) in 4-bit fields of float32 accumulators (exact integers below 2^24), so comparisons
run on the FMA pipe. Sign crossings (W0·W1 < 0, neither ±0) get no bucket; they are counted in a
free 4-bit field instead, and moved elements are the histogram's total plus them. The fast path assumes every
element of the group is finite with |x| < 2^30 and |Δ| < 4 (checked at the group's flush from
Σ W0² + W1² and max |Δ|), and for 16-bit dtypes that the smallest relative tolerances are
exceeded by every moved element (checked by count); a group that fails is recomputed by the
slow path, a plain per-tile version of the CPU twin's semantics. ±0 flips need no special case:
they are changed but not moved.

Outputs. Each program writes int64 counters and float64 sums to its own row of a partials
buffer; the host sums the rows (exact, deterministic; no float atomics). Counts are kept in a
"deficit" form that needs no per-group element count: non-finite pairs instead of finite pairs,
tolerance exceedances instead of passes, and the last ULP bucket is derived as moved − Σ others −
sign crossings (always 0: a distance beyond 2^15, or 2^31 for float32, needs opposite signs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import triton
import triton.language as tl

from dynamics.element_stats import (
    ABS_TOLERANCES,
    REL_EPSILON,
    REL_TOLERANCES,
    ULP_BUCKETS,
    ElementStats,
)

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_KIND = {torch.bfloat16: 0, torch.float16: 1, torch.float32: 2}
_BITS_VIEW = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}

# Slots of the per-program int64 counter row.
_C_CHANGED: tl.constexpr = tl.constexpr(0)
_C_MOVED: tl.constexpr = tl.constexpr(1)
_C_NONFINITE_PAIRS: tl.constexpr = tl.constexpr(2)
_C_CHANGED_NONFINITE: tl.constexpr = tl.constexpr(3)
_C_NAN_A: tl.constexpr = tl.constexpr(4)
_C_NAN_B: tl.constexpr = tl.constexpr(5)
_C_INF_A: tl.constexpr = tl.constexpr(6)
_C_INF_B: tl.constexpr = tl.constexpr(7)
_C_HIDDEN_BF16: tl.constexpr = tl.constexpr(8)
_C_HIDDEN_FP16: tl.constexpr = tl.constexpr(9)
_C_ABS_EXCEED: tl.constexpr = tl.constexpr(10)  # 6 slots: finite pairs with |Δ| > ABS_TOLERANCES[i]
_C_REL_EXCEED: tl.constexpr = tl.constexpr(16)  # 5 slots
_C_HIST: tl.constexpr = tl.constexpr(21)  # ULP buckets 0 .. NB-2 (the last one is derived)
_C_SIGN_CROSSINGS: tl.constexpr = tl.constexpr(60)
NUM_COUNTERS: tl.constexpr = tl.constexpr(64)
NUM_SUMS: tl.constexpr = tl.constexpr(8)  # Σ Δ², Σ |Δ|, Σ W0², Σ W1², max |Δ|, unused ×3

assert len(ABS_TOLERANCES) == 6 and len(REL_TOLERANCES) == 5 and ULP_BUCKETS == 33


def _f32(value: float) -> float:
    return float(np.float32(value))


# Tolerances rounded to float32 (the CPU twin compares against the same numbers) and scaled by
# 2^90: sat(|Δ|·2^90 − τ·2^90) is exactly 1 when |Δ| > τ and 0 otherwise, because two distinct
# float32 values ≥ 1e-17 differ by at least 2^-80. Scaling by a power of two is exact.
_SCALE_EXP = 90
_SCALE: tl.constexpr = tl.constexpr(float(2.0**_SCALE_EXP))
_FAST_LIMIT: tl.constexpr = tl.constexpr(float(2.0**60))  # Σ W0²+W1² bound that keeps |x| < 2^30
_TA0: tl.constexpr = tl.constexpr(_f32(ABS_TOLERANCES[0]) * 2.0**_SCALE_EXP)
_TA1: tl.constexpr = tl.constexpr(_f32(ABS_TOLERANCES[1]) * 2.0**_SCALE_EXP)
_TA2: tl.constexpr = tl.constexpr(_f32(ABS_TOLERANCES[2]) * 2.0**_SCALE_EXP)
_TA3: tl.constexpr = tl.constexpr(_f32(ABS_TOLERANCES[3]) * 2.0**_SCALE_EXP)
_TA4: tl.constexpr = tl.constexpr(_f32(ABS_TOLERANCES[4]) * 2.0**_SCALE_EXP)
_TA5: tl.constexpr = tl.constexpr(_f32(ABS_TOLERANCES[5]) * 2.0**_SCALE_EXP)
_TR0: tl.constexpr = tl.constexpr(_f32(REL_TOLERANCES[0]) * 2.0**_SCALE_EXP)
_TR1: tl.constexpr = tl.constexpr(_f32(REL_TOLERANCES[1]) * 2.0**_SCALE_EXP)
_TR2: tl.constexpr = tl.constexpr(_f32(REL_TOLERANCES[2]) * 2.0**_SCALE_EXP)
_TR3: tl.constexpr = tl.constexpr(_f32(REL_TOLERANCES[3]) * 2.0**_SCALE_EXP)
_TR4: tl.constexpr = tl.constexpr(_f32(REL_TOLERANCES[4]) * 2.0**_SCALE_EXP)
_A0: tl.constexpr = tl.constexpr(_f32(ABS_TOLERANCES[0]))
_A1: tl.constexpr = tl.constexpr(_f32(ABS_TOLERANCES[1]))
_A2: tl.constexpr = tl.constexpr(_f32(ABS_TOLERANCES[2]))
_A3: tl.constexpr = tl.constexpr(_f32(ABS_TOLERANCES[3]))
_A4: tl.constexpr = tl.constexpr(_f32(ABS_TOLERANCES[4]))
_A5: tl.constexpr = tl.constexpr(_f32(ABS_TOLERANCES[5]))
_R0: tl.constexpr = tl.constexpr(_f32(REL_TOLERANCES[0]))
_R1: tl.constexpr = tl.constexpr(_f32(REL_TOLERANCES[1]))
_R2: tl.constexpr = tl.constexpr(_f32(REL_TOLERANCES[2]))
_R3: tl.constexpr = tl.constexpr(_f32(REL_TOLERANCES[3]))
_R4: tl.constexpr = tl.constexpr(_f32(REL_TOLERANCES[4]))
_EPS: tl.constexpr = tl.constexpr(_f32(REL_EPSILON))
# bfloat16: the float32 threshold of REL_TOLERANCES[2] where |W0| < ε, scaled (see _fast_tile).
_TR2_EPS: tl.constexpr = tl.constexpr(_f32(_f32(REL_TOLERANCES[2]) * _f32(REL_EPSILON)) * 2.0**_SCALE_EXP)
_INF: tl.constexpr = tl.constexpr(float("inf"))


# ----------------------------------------------------------------------------- element helpers


@triton.jit
def _sat01(x):
    """min(max(x, 0), 1); ptxas folds it into the producing instruction's .SAT modifier."""
    return tl.minimum(tl.maximum(x, 0.0), 1.0)


@triton.jit
def _shl1(shift, USE_PTX: tl.constexpr):
    """1 << shift for 0 ≤ shift < 32, else 0 (PTX shl clamps the amount; LLVM's shl would not)."""
    if USE_PTX:
        return tl.inline_asm_elementwise(
            "shl.b32 $0, 1, $1;",
            "=r,r", [shift], dtype=tl.int32, is_pure=True, pack=1,
        )
    else:
        in_range = shift.to(tl.uint32, bitcast=True) < 32
        return tl.where(in_range, 1 << (shift & 31), 0)


@triton.jit
def _decode(bits, KIND: tl.constexpr, WORDS: tl.constexpr = False, BR: tl.constexpr = 1, BC: tl.constexpr = 1):
    """Stored bits → (int32 bits, sign-extended for 16-bit dtypes; float32 value).

    WORDS (bfloat16 loaded as int32 words of two elements): the int32 is the element's float32
    bits (its bfloat16 bits in the upper half, zeros below): one instruction per element
    (shift or mask) gives both the bits and the value, where the int16 path needs two.
    """
    if WORDS:
        full = tl.reshape(tl.join(bits << 16, bits & -65536), [BR, BC])
        return full, full.to(tl.float32, bitcast=True)
    elif KIND == 2:
        return bits, bits.to(tl.float32, bitcast=True)
    else:
        wide = bits.to(tl.int32)
        if KIND == 0:
            return wide, (wide << 16).to(tl.float32, bitcast=True)
        else:
            return wide, bits.to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _ulp_bucket(A, B, x, KIND: tl.constexpr, FBITS: tl.constexpr = False):
    """bitlength(d − 1) of the ULP distance d = |ord(B) − ord(A)| (ord: x<0 → INT_MIN − x).

    With s = −1 when the signs differ: d = |M_a − (M_b ^ s) + s|, i.e. |M_a − M_b| or M_a + M_b.
    d = 0 (equal values, ±0) gives a bucket outside 0..NB−2 (negative for 16-bit dtypes, 32 for
    float32), so it never lands in an accumulated bucket.
    """
    s = x >> 31
    if FBITS:
        # A, B: float32 bits of bfloat16 values (16 zero bits below; only x's sign bit is used).
        # diff = 2^16·(M_a ∓ M_b); with s = −1 the XOR also sets the low bits, which + s cancels:
        # 2^16·M_a − (−2^16·M_b − 1) − 1 = 2^16·(M_a + M_b). Exact below 2^31, i.e. for
        # M_a + M_b < 2^15, which the fast path guarantees (|Δ| < 4, see _fast_tile); the slow
        # path uses the sign-extended 16-bit form instead. bitlength(d − 1) = exponent(2d − 1).
        # Without masking A: A − (B ^ (s & 0x7FFFFFFF)) + s ≡ diff (mod 2^32), the sign bits
        # cancel (same signs) or add up to 2^32 (opposite signs); int32 arithmetic wraps.
        diff = (A - (B ^ (s & 0x7FFFFFFF)) + s).to(tl.float32)
        f = tl.fma(tl.abs(diff), 1.0 / 32768.0, -1.0)
        return (f.to(tl.int32, bitcast=True) >> 23) - 127
    elif KIND == 2:
        diff = (A & 0x7FFFFFFF) - ((B & 0x7FFFFFFF) ^ s) + s
        d = tl.where(s != 0, diff, tl.abs(diff)).to(tl.uint32, bitcast=True)
        # float64 holds any uint32 exactly; bitlength(t) = exponent(t + 0.5) + 1.
        t = (d - 1).to(tl.float64) + 0.5
        return (t.to(tl.int64, bitcast=True) >> 52).to(tl.int32) - 1022
    else:
        diff = ((A & 0x7FFF) - ((B & 0x7FFF) ^ s) + s).to(tl.float32)
        # bitlength(d − 1) = exponent(2d − 1); float32 holds 2d − 1 < 2^17 exactly.
        f = tl.fma(tl.abs(diff), 2.0, -1.0)
        return (f.to(tl.int32, bitcast=True) >> 23) - 127


@triton.jit
def _bf16_bits(A, a, USE_PTX: tl.constexpr):
    """Bits of the round-to-nearest-even bfloat16 of float32 `a` (finite), as comparable ints."""
    if USE_PTX:
        return a.to(tl.bfloat16).to(tl.int16, bitcast=True).to(tl.int32)
    else:
        # The interpreter truncates float32 → bfloat16, so round on the bits (same as torch).
        return (A + 0x7FFF + ((A >> 16) & 1)) >> 16


@triton.jit
def _fp16_bits(a):
    return a.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32)


# ----------------------------------------------------------------------------- tiles


@triton.jit
def _load_tile(a_ptr, b_ptr, tr, tc, R, C, local, lr, lc,
               BR: tl.constexpr, BC: tl.constexpr, MASKED: tl.constexpr, WORDS: tl.constexpr = False):
    """The (tr, tc) tile of both tensors; WORDS: as [BR, BC/2] int32 words (C = words per row)."""
    if WORDS:
        base = (tr * BR).to(tl.int64) * C + tc * (BC // 2)
    else:
        base = (tr * BR).to(tl.int64) * C + tc * BC
    if MASKED:
        if WORDS:
            mask = ((tr * BR + lr) < R)[:, None] & ((tc * (BC // 2) + lc) < C)[None, :]
        else:
            mask = ((tr * BR + lr) < R)[:, None] & ((tc * BC + lc) < C)[None, :]
        A = tl.load(a_ptr + base + local, mask=mask, other=0, eviction_policy="evict_first")
        B = tl.load(b_ptr + base + local, mask=mask, other=0, eviction_policy="evict_first")
    else:
        A = tl.load(a_ptr + base + local, eviction_policy="evict_first")
        B = tl.load(b_ptr + base + local, eviction_policy="evict_first")
    return A, B


@triton.jit
def _bit_or(p, q):
    return p | q


@triton.jit
def _rel_exceed(acc, ad, scale, TR, FIELD: tl.constexpr):
    return tl.fma(_sat01(tl.fma(ad, _SCALE, -(TR * scale))), 16.0**FIELD, acc)


@triton.jit
def _fast_tile(A, B, x, xw, a, b, h0, h1, h2, h3, acc_abs, acc_rel, acc_chg, ssd, sad, ssa, ssb, mx,
               KIND: tl.constexpr, USE_PTX: tl.constexpr, WORDS: tl.constexpr = False):
    """Add one tile to the per-lane packed counters (all elements assumed finite, |x| < 2^30).

    acc_abs fields 0-5: |Δ| > ABS_TOLERANCES[i]. acc_rel fields: |Δ| > REL_TOLERANCES[i] for
    i ≥ REL_FIRST at field i − REL_FIRST, changed bits at field 4 (16-bit dtypes). For float32,
    acc_chg holds changed, bf16-visible and fp16-visible at fields 0-2. Moved elements are not
    counted here: they are the ULP histogram's total, whose last bucket (d > 2^15, or 2^31 for
    float32) needs opposite signs with M_a + M_b > 2·M(2.0), hence |Δ| > 4 by convexity of the
    value in M; the flush sends groups with max |Δ| ≥ 4 to the slow path.
    A moved bf16 (fp16) element with normal |W0| ≥ ε has |Δ|/|W0| > 2^-9 (2^-12), so it exceeds
    the relative tolerances below REL_FIRST iff it exceeds the one at REL_FIRST; the flush checks
    exceed(REL_FIRST) == moved and otherwise sends the group to the slow path.
    For bfloat16 the field of REL_FIRST counts |Δ| > τ₂·ε (the threshold where |W0| < ε) instead:
    a moved element with |W0| ≥ ε has |Δ| ≥ 2^-9·|W0| > τ₂·|W0| ≥ τ₂·ε, so both counts equal
    moved exactly when every moved element with |W0| < ε has |Δ| > τ₂·ε, and the check is the same.
    The comparisons are sat(fma(|Δ|, 2^90, −τ·2^90)): |Δ|·2^90 is exact, so the fused form rounds
    exactly like the subtraction from the scaled |Δ|.
    WORDS (bfloat16 as int32 words): x holds only the sign of each element's XOR, xw the XOR
    of whole words, and acc_chg counts changed elements per word in two 16-bit halves.
    Sign crossings (x < 0, a ≠ 0, b ≠ 0) get no ULP bucket and are counted in a free field:
    acc_chg field 3 (float32), acc_rel field 3 (bfloat16), acc_rel field 5 (float16).
    """
    if WORDS:
        # bit 15 (31) of y is set iff the low (high) half of xw is nonzero; the masked halves
        # plus 0x7FFF cannot carry out of their half.
        y = ((xw & 0x7FFF7FFF) + 0x7FFF7FFF) | xw
        acc_chg += ((y & -2147450880) >> 15) & 0x10001  # -2147450880 = 0x80008000
    elif KIND == 2:
        changed = _sat01(tl.abs(x.to(tl.float32)))
        acc_chg += changed
        vis_bf16 = _sat01(tl.abs((_bf16_bits(A, a, USE_PTX) ^ _bf16_bits(B, b, USE_PTX)).to(tl.float32)))
        vis_fp16 = _sat01(tl.abs((_fp16_bits(a) ^ _fp16_bits(b)).to(tl.float32)))
        acc_chg = tl.fma(vis_bf16, 16.0, acc_chg)
        acc_chg = tl.fma(vis_fp16, 256.0, acc_chg)
    else:
        changed = _sat01(tl.abs(x.to(tl.float32)))
        acc_rel = tl.fma(changed, 65536.0, acc_rel)

    crossing = (x < 0) & (a != 0.0) & (b != 0.0)
    cross = crossing.to(tl.float32)
    if KIND == 2:
        acc_chg = tl.fma(cross, 4096.0, acc_chg)
    elif KIND == 0:
        acc_rel = tl.fma(cross, 4096.0, acc_rel)
    else:
        acc_rel = tl.fma(cross, 1048576.0, acc_rel)
    shift = tl.where(crossing, -1, _ulp_bucket(A, B, x, KIND, WORDS) * 4)  # −1: no field
    h0 += _shl1(shift, USE_PTX)
    h1 += _shl1(shift - 32, USE_PTX)
    if KIND == 2:
        h2 += _shl1(shift - 64, USE_PTX)
        h3 += _shl1(shift - 96, USE_PTX)

    delta = b - a
    ad = tl.abs(delta)
    ssd = tl.fma(delta, delta, ssd)
    sad += ad
    ssa = tl.fma(a, a, ssa)
    ssb = tl.fma(b, b, ssb)
    mx = tl.maximum(mx, ad)
    acc_abs += _sat01(tl.fma(ad, _SCALE, -_TA0))
    acc_abs = tl.fma(_sat01(tl.fma(ad, _SCALE, -_TA1)), 16.0, acc_abs)
    acc_abs = tl.fma(_sat01(tl.fma(ad, _SCALE, -_TA2)), 256.0, acc_abs)
    acc_abs = tl.fma(_sat01(tl.fma(ad, _SCALE, -_TA3)), 4096.0, acc_abs)
    acc_abs = tl.fma(_sat01(tl.fma(ad, _SCALE, -_TA4)), 65536.0, acc_abs)
    acc_abs = tl.fma(_sat01(tl.fma(ad, _SCALE, -_TA5)), 1048576.0, acc_abs)
    scale = tl.maximum(tl.abs(a), _EPS)
    FIRST: tl.constexpr = 2 if KIND == 0 else (1 if KIND == 1 else 0)  # see _fast_tile
    if FIRST == 0:
        acc_rel = _rel_exceed(acc_rel, ad, scale, _TR0, 0 - FIRST)
    if FIRST <= 1:
        acc_rel = _rel_exceed(acc_rel, ad, scale, _TR1, 1 - FIRST)
    if KIND == 0:
        acc_rel += _sat01(tl.fma(ad, _SCALE, -_TR2_EPS))
    else:
        acc_rel = _rel_exceed(acc_rel, ad, scale, _TR2, 2 - FIRST)
    acc_rel = _rel_exceed(acc_rel, ad, scale, _TR3, 3 - FIRST)
    acc_rel = _rel_exceed(acc_rel, ad, scale, _TR4, 4 - FIRST)
    return h0, h1, h2, h3, acc_abs, acc_rel, acc_chg, ssd, sad, ssa, ssb, mx


@triton.jit
def _count(cnt, idx, slot, mask):
    return cnt + tl.where(idx == slot, tl.sum(mask.to(tl.int32)).to(tl.int64), 0)


@triton.jit
def _tolerance(i):
    """float32 ABS_TOLERANCES[i] for i < 6, REL_TOLERANCES[i − 6] after (a scalar select chain)."""
    t = tl.where(i == 0, _A0, _A1)
    t = tl.where(i == 2, _A2, t)
    t = tl.where(i == 3, _A3, t)
    t = tl.where(i == 4, _A4, t)
    t = tl.where(i == 5, _A5, t)
    t = tl.where(i == 6, _R0, t)
    t = tl.where(i == 7, _R1, t)
    t = tl.where(i == 8, _R2, t)
    t = tl.where(i == 9, _R3, t)
    return tl.where(i == 10, _R4, t)


@triton.jit
def _slow_tile(A, B, a, b, cnt, idx, ssd, sad, ssa, ssb, mx,
               KIND: tl.constexpr, USE_PTX: tl.constexpr, NB: tl.constexpr, WORDS: tl.constexpr = False):
    """One tile with the CPU twin's semantics (NaN/Inf/huge/tiny values), plain reductions.

    Rarely run; the runtime loops keep one reduction live at a time so that this path does not
    raise the register budget of the whole kernel.
    """
    x = A ^ B
    changed = x != 0
    finite = (tl.abs(a) < _INF) & (tl.abs(b) < _INF)
    moved = changed & finite & ((a != 0.0) | (b != 0.0))
    delta = tl.where(finite, b - a, 0.0)
    ad = tl.abs(delta)
    cnt = _count(cnt, idx, _C_CHANGED, changed)
    cnt = _count(cnt, idx, _C_MOVED, moved)
    cnt = _count(cnt, idx, _C_NONFINITE_PAIRS, ~finite)
    cnt = _count(cnt, idx, _C_CHANGED_NONFINITE, changed & ~finite)
    cnt = _count(cnt, idx, _C_NAN_A, a != a)  # noqa: PLR0124 (x != x is NaN in a Triton kernel)
    cnt = _count(cnt, idx, _C_NAN_B, b != b)  # noqa: PLR0124
    cnt = _count(cnt, idx, _C_INF_A, tl.abs(a) == _INF)
    cnt = _count(cnt, idx, _C_INF_B, tl.abs(b) == _INF)
    if KIND == 2:
        same_bf16 = _bf16_bits(A, a, USE_PTX) == _bf16_bits(B, b, USE_PTX)
        cnt = _count(cnt, idx, _C_HIDDEN_BF16, moved & same_bf16)
        cnt = _count(cnt, idx, _C_HIDDEN_FP16, moved & (_fp16_bits(a) == _fp16_bits(b)))
    scale = tl.maximum(tl.abs(a), _EPS)
    for i in range(11):
        limit = tl.where(i < 6, _tolerance(i), _tolerance(i) * scale)
        cnt = _count(cnt, idx, _C_ABS_EXCEED + i, finite & (ad > limit))
    crossing = moved & (x < 0) & (a != 0.0) & (b != 0.0)
    cnt = _count(cnt, idx, _C_SIGN_CROSSINGS, crossing)
    bucketed = moved & ~crossing
    if WORDS:  # float32 bits of bfloat16 values → the sign-extended 16-bit form (exact distances)
        bucket = tl.where(bucketed, _ulp_bucket(A >> 16, B >> 16, x >> 16, KIND), -1)
    else:
        bucket = tl.where(bucketed, _ulp_bucket(A, B, x, KIND), -1)
    for j in range(NB - 1):
        cnt = _count(cnt, idx, _C_HIST + j, bucket == j)
    # float64 squares: float32 ones overflow above 1.8e19
    ssd += tl.sum(delta.to(tl.float64) * delta.to(tl.float64))
    sad += tl.sum(ad.to(tl.float64))
    ssa += tl.sum(tl.where(finite, a, 0.0).to(tl.float64) * tl.where(finite, a, 0.0).to(tl.float64))
    ssb += tl.sum(tl.where(finite, b, 0.0).to(tl.float64) * tl.where(finite, b, 0.0).to(tl.float64))
    mx = tl.maximum(mx, tl.max(ad))
    return cnt, ssd, sad, ssa, ssb, mx


@triton.jit
def _add_fields(cnt, idx, packed, FIRST: tl.constexpr, N: tl.constexpr):
    """Add the lane sums of the N 4-bit fields of `packed` (int32) to slots FIRST.. of cnt.

    Fields k and k+4 are summed together in the two 16-bit halves of one reduction: a tile of up
    to 4096 lanes adds at most 15·4096 < 2^16 per half.
    """
    for k in tl.static_range(min(N, 4)):
        both = tl.sum((packed >> (4 * k)) & 0x000F000F)
        cnt += tl.where(idx == FIRST + k, (both & 0xFFFF).to(tl.int64), 0)
        if k + 4 < N:
            cnt += tl.where(idx == FIRST + k + 4, (both >> 16).to(tl.int64), 0)
    return cnt


@triton.jit
def _flush_cols(col_flags_ptr, colacc, tc, C, lc, BC: tl.constexpr, WORDS: tl.constexpr = False):
    col_any = tl.reduce(colacc, 0, _bit_or)
    if WORDS:  # colacc holds XORs of words: element 2j is the low half, 2j+1 the high half
        col_any = tl.reshape(tl.join(col_any << 16, col_any & -65536), [BC])
        lc = tl.arange(0, BC)
    cols = tc * BC + lc
    tl.store(col_flags_ptr + cols, tl.full([BC], 1, tl.int8), mask=(col_any != 0) & (cols < C))


@triton.jit
def _next_tile(tr, tc, n_tiles_r):
    """Position of the tile after (tr, tc) going down column strips."""
    wrap = tr + 1 == n_tiles_r
    return tl.where(wrap, 0, tr + 1), tl.where(wrap, tc + 1, tc)


@triton.jit
def _tile_step(A_bits, B_bits, tr, tc, cur_tc, colacc, row_flags_ptr, col_flags_ptr, C, lr, lc,
               h0, h1, h2, h3, acc_abs, acc_rel, acc_chg, ssd, sad, ssa, ssb, mx,
               KIND: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr, ROWCOL: tl.constexpr,
               USE_PTX: tl.constexpr, WORDS: tl.constexpr = False):
    """Flags and fast-path counters of the tile at (tr, tc).

    WORDS: row and column flags come from the XOR of whole words (one instruction per two
    elements, a [BR, BC/2] column accumulator); C is then the row length in words.
    """
    A, a = _decode(A_bits, KIND, WORDS, BR, BC)
    B, b = _decode(B_bits, KIND, WORDS, BR, BC)
    if WORDS:
        xw = A_bits ^ B_bits
        x = tl.reshape(tl.join(xw << 16, xw), [BR, BC])  # sign bits of the elements' XOR
    else:
        x = A ^ B
        xw = x
    if ROWCOL:
        xr = xw
        row_any = tl.reduce(xr, 1, _bit_or)
        tl.store(row_flags_ptr + tr * BR + lr, tl.full([BR], 1, tl.int8), mask=row_any != 0)
        if tc != cur_tc:
            _flush_cols(col_flags_ptr, colacc, cur_tc, C * 2 if WORDS else C, lc, BC, WORDS)
            colacc = tl.zeros([BR, BC // 2 if WORDS else BC], tl.int32)
            cur_tc = tc
        colacc |= xr
    h0, h1, h2, h3, acc_abs, acc_rel, acc_chg, ssd, sad, ssa, ssb, mx = _fast_tile(
        A, B, x, xw, a, b, h0, h1, h2, h3, acc_abs, acc_rel, acc_chg, ssd, sad, ssa, ssb, mx,
        KIND, USE_PTX, WORDS)
    return cur_tc, colacc, h0, h1, h2, h3, acc_abs, acc_rel, acc_chg, ssd, sad, ssa, ssb, mx


@triton.jit
def _element_stats_kernel(
    a_ptr, b_ptr, counts_ptr, sums_ptr, row_flags_ptr, col_flags_ptr,
    R, C, n_tiles_r, n_tiles,
    KIND: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr, GROUP: tl.constexpr,
    MASKED: tl.constexpr, ROWCOL: tl.constexpr, USE_PTX: tl.constexpr, WORDS: tl.constexpr = False,
):
    """One program: a contiguous run of tiles (column strip after column strip), in groups.

    Two tiles per warp are in flight while it computes (memory-level parallelism, not
    arithmetic, limited a one-tile-ahead version to half the copy bandwidth).
    WORDS (bfloat16 with an even row length): the tensors come as int32 words of two elements
    and C counts words per row; tiles are still BR×BC elements.
    """
    NB: tl.constexpr = 33 if KIND == 2 else 17
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    t_begin = (pid.to(tl.int64) * n_tiles // n_prog).to(tl.int32)
    t_end = ((pid.to(tl.int64) + 1) * n_tiles // n_prog).to(tl.int32)

    lr = tl.arange(0, BR)
    lc = tl.arange(0, BC // 2 if WORDS else BC)
    local = lr[:, None] * C + lc[None, :]
    idx = tl.arange(0, NUM_COUNTERS)
    cnt = tl.zeros([NUM_COUNTERS], tl.int64)
    tot_ssd = tl.zeros([], tl.float64)
    tot_sad = tl.zeros([], tl.float64)
    tot_ssa = tl.zeros([], tl.float64)
    tot_ssb = tl.zeros([], tl.float64)
    tot_mx = tl.zeros([], tl.float32)

    # (tr, tc): position of tile t; tiles advance down a column strip, then to the next strip.
    tr = t_begin % n_tiles_r
    tc = t_begin // n_tiles_r
    cur_tc = tc
    colacc = tl.zeros([BR, BC // 2 if WORDS else BC], tl.int32)
    tr1, tc1 = _next_tile(tr, tc, n_tiles_r)
    has1 = t_begin + 1 < t_end
    P0a, P0b = _load_tile(a_ptr, b_ptr, tr, tc, R, C, local, lr, lc, BR, BC, MASKED, WORDS)
    P1a, P1b = _load_tile(a_ptr, b_ptr, tl.where(has1, tr1, tr), tl.where(has1, tc1, tc),
                          R, C, local, lr, lc, BR, BC, MASKED, WORDS)

    for g0 in range(t_begin, t_end, GROUP):
        g1 = tl.minimum(g0 + GROUP, t_end)
        h0 = tl.zeros([BR, BC], tl.int32)
        h1 = tl.zeros([BR, BC], tl.int32)
        h2 = tl.zeros([BR, BC], tl.int32)
        h3 = tl.zeros([BR, BC], tl.int32)
        acc_abs = tl.zeros([BR, BC], tl.float32)
        acc_rel = tl.zeros([BR, BC], tl.float32)
        if WORDS:
            acc_chg = tl.zeros([BR, BC // 2], tl.int32)
        else:
            acc_chg = tl.zeros([BR, BC], tl.float32)
        ssd = tl.zeros([BR, BC], tl.float32)
        sad = tl.zeros([BR, BC], tl.float32)
        ssa = tl.zeros([BR, BC], tl.float32)
        ssb = tl.zeros([BR, BC], tl.float32)
        mx = tl.zeros([BR, BC], tl.float32)
        # Four tiles per step with two buffer pairs: P holds tiles t, t+1 on entry; Q is loaded
        # before P is used and P is reloaded (t+4, t+5) before Q is used, so two tiles are always
        # in flight and P is rewritten in place (no register copies). Loads past the end of the
        # run reload tile t (no branch).
        for t in range(g0, g1, 4):
            tr1, tc1 = _next_tile(tr, tc, n_tiles_r)
            tr2, tc2 = _next_tile(tr1, tc1, n_tiles_r)
            tr3, tc3 = _next_tile(tr2, tc2, n_tiles_r)
            tr4, tc4 = _next_tile(tr3, tc3, n_tiles_r)
            tr5, tc5 = _next_tile(tr4, tc4, n_tiles_r)
            Q0a, Q0b = _load_tile(a_ptr, b_ptr, tl.where(t + 2 < t_end, tr2, tr), tl.where(t + 2 < t_end, tc2, tc),
                                  R, C, local, lr, lc, BR, BC, MASKED, WORDS)
            Q1a, Q1b = _load_tile(a_ptr, b_ptr, tl.where(t + 3 < t_end, tr3, tr), tl.where(t + 3 < t_end, tc3, tc),
                                  R, C, local, lr, lc, BR, BC, MASKED, WORDS)
            cur_tc, colacc, h0, h1, h2, h3, acc_abs, acc_rel, acc_chg, ssd, sad, ssa, ssb, mx = _tile_step(
                P0a, P0b, tr, tc, cur_tc, colacc, row_flags_ptr, col_flags_ptr, C, lr, lc,
                h0, h1, h2, h3, acc_abs, acc_rel, acc_chg, ssd, sad, ssa, ssb, mx,
                KIND, BR, BC, ROWCOL, USE_PTX, WORDS)
            if t + 1 < g1:
                cur_tc, colacc, h0, h1, h2, h3, acc_abs, acc_rel, acc_chg, ssd, sad, ssa, ssb, mx = _tile_step(
                    P1a, P1b, tr1, tc1, cur_tc, colacc, row_flags_ptr, col_flags_ptr, C, lr, lc,
                    h0, h1, h2, h3, acc_abs, acc_rel, acc_chg, ssd, sad, ssa, ssb, mx,
                    KIND, BR, BC, ROWCOL, USE_PTX, WORDS)
            P0a, P0b = _load_tile(a_ptr, b_ptr, tl.where(t + 4 < t_end, tr4, tr), tl.where(t + 4 < t_end, tc4, tc),
                                  R, C, local, lr, lc, BR, BC, MASKED, WORDS)
            P1a, P1b = _load_tile(a_ptr, b_ptr, tl.where(t + 5 < t_end, tr5, tr), tl.where(t + 5 < t_end, tc5, tc),
                                  R, C, local, lr, lc, BR, BC, MASKED, WORDS)
            if t + 2 < g1:
                cur_tc, colacc, h0, h1, h2, h3, acc_abs, acc_rel, acc_chg, ssd, sad, ssa, ssb, mx = _tile_step(
                    Q0a, Q0b, tr2, tc2, cur_tc, colacc, row_flags_ptr, col_flags_ptr, C, lr, lc,
                    h0, h1, h2, h3, acc_abs, acc_rel, acc_chg, ssd, sad, ssa, ssb, mx,
                    KIND, BR, BC, ROWCOL, USE_PTX, WORDS)
            if t + 3 < g1:
                cur_tc, colacc, h0, h1, h2, h3, acc_abs, acc_rel, acc_chg, ssd, sad, ssa, ssb, mx = _tile_step(
                    Q1a, Q1b, tr3, tc3, cur_tc, colacc, row_flags_ptr, col_flags_ptr, C, lr, lc,
                    h0, h1, h2, h3, acc_abs, acc_rel, acc_chg, ssd, sad, ssa, ssb, mx,
                    KIND, BR, BC, ROWCOL, USE_PTX, WORDS)
            tr, tc = tr4, tc4

        FIRST: tl.constexpr = 2 if KIND == 0 else (1 if KIND == 1 else 0)  # see _fast_tile
        hist = tl.zeros([NUM_COUNTERS], tl.int64)
        hist = _add_fields(hist, idx, h0, _C_HIST, 8)
        hist = _add_fields(hist, idx, h1, _C_HIST + 8, 8)
        if KIND == 2:
            hist = _add_fields(hist, idx, h2, _C_HIST + 16, 8)
            hist = _add_fields(hist, idx, h3, _C_HIST + 24, 8)
        rel = acc_rel.to(tl.int32)
        if KIND == 2:
            crossings_g = tl.sum((acc_chg.to(tl.int32) >> 12) & 15).to(tl.int64)
        elif KIND == 0:
            crossings_g = tl.sum((rel >> 12) & 15).to(tl.int64)
        else:
            crossings_g = tl.sum((rel >> 20) & 15).to(tl.int64)
        moved_g = tl.sum(hist) + crossings_g
        mx_g = tl.max(mx)
        fast_ok = ((tl.sum(ssa) + tl.sum(ssb)) < _FAST_LIMIT) & (mx_g < 4.0)
        if FIRST > 0:
            fast_ok = fast_ok & (tl.sum(rel & 15).to(tl.int64) == moved_g)
        if fast_ok:
            if KIND == 2:
                chg = acc_chg.to(tl.int32)
                changed_g = tl.sum(chg & 15)
                hidden_bf16 = changed_g - tl.sum((chg >> 4) & 15)
                hidden_fp16 = changed_g - tl.sum((chg >> 8) & 15)
                cnt += tl.where(idx == _C_HIDDEN_BF16, hidden_bf16.to(tl.int64), 0)
                cnt += tl.where(idx == _C_HIDDEN_FP16, hidden_fp16.to(tl.int64), 0)
            elif WORDS:
                changed_g = tl.sum((acc_chg & 0xFFFF) + (acc_chg >> 16))
            else:
                changed_g = tl.sum((rel >> 16) & 15)
            cnt += tl.where(idx == _C_CHANGED, changed_g.to(tl.int64), 0)
            cnt += tl.where(idx == _C_MOVED, moved_g, 0) + hist
            cnt += tl.where(idx == _C_SIGN_CROSSINGS, crossings_g, 0)
            cnt = _add_fields(cnt, idx, acc_abs.to(tl.int32), _C_ABS_EXCEED, 6)
            cnt = _add_fields(cnt, idx, rel, _C_REL_EXCEED + FIRST, 5 - FIRST)
            for i in tl.static_range(FIRST):
                cnt += tl.where(idx == _C_REL_EXCEED + i, moved_g, 0)
            tot_ssd += tl.sum(ssd).to(tl.float64)
            tot_sad += tl.sum(sad).to(tl.float64)
            tot_ssa += tl.sum(ssa).to(tl.float64)
            tot_ssb += tl.sum(ssb).to(tl.float64)
            tot_mx = tl.maximum(tot_mx, mx_g)
        else:
            for t in range(g0, g1):
                A_bits, B_bits = _load_tile(a_ptr, b_ptr, t % n_tiles_r, t // n_tiles_r, R, C,
                                            local, lr, lc, BR, BC, MASKED, WORDS)
                A, a = _decode(A_bits, KIND, WORDS, BR, BC)
                B, b = _decode(B_bits, KIND, WORDS, BR, BC)
                cnt, tot_ssd, tot_sad, tot_ssa, tot_ssb, tot_mx = _slow_tile(
                    A, B, a, b, cnt, idx, tot_ssd, tot_sad, tot_ssa, tot_ssb, tot_mx, KIND, USE_PTX, NB, WORDS)

    if ROWCOL:
        _flush_cols(col_flags_ptr, colacc, cur_tc, C * 2 if WORDS else C, lc, BC, WORDS)
    tl.store(counts_ptr + pid * NUM_COUNTERS + idx, cnt)
    sums_row = sums_ptr + pid * NUM_SUMS
    tl.store(sums_row + 0, tot_ssd)
    tl.store(sums_row + 1, tot_sad)
    tl.store(sums_row + 2, tot_ssa)
    tl.store(sums_row + 3, tot_ssb)
    tl.store(sums_row + 4, tot_mx.to(tl.float64))


# ----------------------------------------------------------------------------- host side


@dataclass(frozen=True)
class KernelConfig:
    """Launch parameters. One warp per program keeps every reduction inside a warp (no barriers).

    tile_bytes: bytes of each tensor per loop step (512 = one 16-byte load per lane per tensor);
    num_warps: warps per program; group: tiles between flushes of the 4-bit packed counters
    (a multiple of 4, ≤ 12: tiles go in fours).
    """

    tile_bytes: int = 512
    num_warps: int = 1
    group: int = 12


DEFAULT_CONFIG = KernelConfig()


@dataclass(frozen=True)
class ElementStatsPartials:
    """Device buffers one launch fills; `reduce_partials` turns them into `ElementStats`."""

    counts: torch.Tensor  # int64 [programs, NUM_COUNTERS]
    sums: torch.Tensor  # float64 [programs, NUM_SUMS]
    row_flags: torch.Tensor | None  # int8 [rows]: 1 where the row has a changed element
    col_flags: torch.Tensor | None  # int8 [cols]
    numel: int
    dtype: torch.dtype


def _largest_pow2_divisor(n: int, cap: int) -> int:
    p = 1
    while p < cap and n % (2 * p) == 0:
        p *= 2
    return p


def _tile_shape(rows: int, cols: int, tile: int) -> tuple[int, int, bool]:
    """(BR, BC, masked) for `tile` elements: unmasked power-of-two tiles where they divide the
    matrix and are not tiny, else masked tiles (ragged edges)."""
    bc = _largest_pow2_divisor(cols, tile)
    if bc >= 32 or bc == cols:
        br = _largest_pow2_divisor(rows, tile // bc)
        if br * bc >= min(tile, rows * cols) // 2:
            return br, bc, False
    bc = min(tile, triton.next_power_of_2(cols))
    br = min(tile // bc, triton.next_power_of_2(rows))
    return br, bc, True


_RESIDENT_CACHE: dict[tuple, int] = {}


def _resident_programs(device: torch.device, key: tuple, compile_fn) -> int:
    """Programs that fit on the device at once: the persistent grid.

    Registers are the limit, and the register file is split between the 4 sub-partitions of an
    SM (a warp's registers live in one): 205 registers per thread fit 2 warps per sub-partition,
    8 per SM, not 65536 // (208·32) = 9. A grid one program per SM too large runs a second wave
    after the first and takes up to twice as long.
    """
    if key not in _RESIDENT_CACHE:
        props = torch.cuda.get_device_properties(device)
        compiled = compile_fn()
        init = getattr(compiled, "_init_handles", None)
        if init is not None:
            init()
        num_warps = key[2].num_warps
        regs_per_warp = -(-int(getattr(compiled, "n_regs", 0) or 255) // 8) * 8 * 32
        regs_per_sm = getattr(props, "regs_per_multiprocessor", 65536)
        warps_per_sm = 4 * ((regs_per_sm // 4) // regs_per_warp)
        per_sm = min(32, 64 // num_warps, warps_per_sm // num_warps)
        _RESIDENT_CACHE[key] = props.multi_processor_count * max(1, per_sm)
    return _RESIDENT_CACHE[key]


def _check(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"element_stats needs equal shape and dtype, got {tuple(a.shape)}/{a.dtype} vs {tuple(b.shape)}/{b.dtype}")
    if a.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"element_stats supports {SUPPORTED_DTYPES}, got {a.dtype}")
    if a.device != b.device:
        raise ValueError(f"element_stats needs both tensors on one device, got {a.device} and {b.device}")
    if not (a.is_contiguous() and b.is_contiguous()):
        raise ValueError("element_stats needs contiguous tensors")


def launch_element_stats(a: torch.Tensor, b: torch.Tensor, config: KernelConfig = DEFAULT_CONFIG) -> ElementStatsPartials:
    """Run the fused kernel on (W0 = a, W1 = b) without synchronising; see `reduce_partials`.

    Tensors live on a CUDA device, or on the CPU under TRITON_INTERPRET=1. Needs numel > 0.
    """
    _check(a, b)
    if a.numel() == 0:
        raise ValueError("launch_element_stats needs a non-empty tensor")
    if not (4 <= config.group <= 12 and config.group % 4 == 0):
        raise ValueError(f"KernelConfig.group must be 4, 8 or 12, got {config.group}")
    is_matrix = a.dim() == 2
    if is_matrix:
        rows, cols = a.shape
    else:
        cols = a.shape[-1] if a.dim() > 0 else 1
        rows = a.numel() // cols
    br, bc, masked = _tile_shape(rows, cols, max(1, config.tile_bytes // a.element_size()))
    n_tiles_r = triton.cdiv(rows, br)
    n_tiles = n_tiles_r * triton.cdiv(cols, bc)
    device = a.device
    # bfloat16 pairs with an even row length go in as int32 words of two elements (see _decode).
    words = (a.dtype == torch.bfloat16 and cols % 2 == 0 and bc % 2 == 0
             and a.data_ptr() % 4 == 0 and b.data_ptr() % 4 == 0)
    view = torch.int32 if words else _BITS_VIEW[a.dtype]
    a_bits = a.reshape(-1).view(view) if words else a.view(view)
    b_bits = b.reshape(-1).view(view) if words else b.view(view)
    scalars = (rows, cols // 2 if words else cols, n_tiles_r, n_tiles)
    kwargs = {
        "KIND": _KIND[a.dtype], "BR": br, "BC": bc, "GROUP": config.group, "MASKED": masked, "ROWCOL": is_matrix,
        "USE_PTX": device.type == "cuda", "WORDS": words,
        "num_warps": config.num_warps, "enable_fp_fusion": False,
    }

    def outputs(programs: int) -> tuple[torch.Tensor, ...]:
        counts = torch.empty((programs, NUM_COUNTERS), dtype=torch.int64, device=device)
        sums = torch.empty((programs, NUM_SUMS), dtype=torch.float64, device=device)
        row_flags = torch.zeros(rows, dtype=torch.int8, device=device) if is_matrix else counts
        col_flags = torch.zeros(cols, dtype=torch.int8, device=device) if is_matrix else counts
        return counts, sums, row_flags, col_flags

    if device.type == "cuda":
        # Compiling once with the same arguments gives the register count of this specialisation.
        key = (device.index, a.dtype, config, br, bc, masked, is_matrix, words,
               tuple((v % 16 == 0, v == 1) for v in scalars))
        resident = _resident_programs(device, key, lambda: _element_stats_kernel.warmup(
            a_bits, b_bits, *outputs(1), *scalars, grid=(1,), **kwargs))
        programs = min(n_tiles, resident)
    else:
        programs = min(n_tiles, 2)  # interpreter: a few programs exercise the partials
    counts, sums, row_flags, col_flags = outputs(programs)
    _element_stats_kernel[(programs,)](a_bits, b_bits, counts, sums, row_flags, col_flags,
                                       *scalars, **kwargs)
    if not is_matrix:
        row_flags = col_flags = None
    return ElementStatsPartials(counts, sums, row_flags, col_flags, a.numel(), a.dtype)


def reduce_partials(partials: ElementStatsPartials) -> ElementStats:
    """Sum the programs' partial counters (int64) and sums (float64) into `ElementStats`."""
    c = partials.counts.sum(dim=0).tolist()
    sums = partials.sums.sum(dim=0).tolist()
    max_abs_delta = float(partials.sums[:, 4].max())
    n_buckets = ULP_BUCKETS if partials.dtype == torch.float32 else 17
    hist = c[_C_HIST: _C_HIST + n_buckets - 1]
    moved, crossings = c[_C_MOVED], c[_C_SIGN_CROSSINGS]
    hist = hist + [moved - sum(hist) - crossings] + [0] * (ULP_BUCKETS - n_buckets)
    finite = partials.numel - c[_C_NONFINITE_PAIRS]
    is_fp32 = partials.dtype == torch.float32
    stats = ElementStats(
        numel=partials.numel,
        changed=c[_C_CHANGED],
        changed_signed_zero=c[_C_CHANGED] - moved - c[_C_CHANGED_NONFINITE],
        changed_nonfinite=c[_C_CHANGED_NONFINITE],
        nan_a=c[_C_NAN_A], nan_b=c[_C_NAN_B], inf_a=c[_C_INF_A], inf_b=c[_C_INF_B],
        finite_pairs=finite,
        ulp_histogram=tuple(hist),
        sign_crossings=crossings,
        within_abs=tuple(finite - c[_C_ABS_EXCEED + i] for i in range(len(ABS_TOLERANCES))),
        within_rel=tuple(finite - c[_C_REL_EXCEED + i] for i in range(len(REL_TOLERANCES))),
        hidden_by_bf16=c[_C_HIDDEN_BF16] if is_fp32 else None,
        hidden_by_fp16=c[_C_HIDDEN_FP16] if is_fp32 else None,
        sum_sq_delta=sums[0], sum_abs_delta=sums[1], sum_sq_a=sums[2], sum_sq_b=sums[3],
        max_abs_delta=max_abs_delta,
        rows=None, cols=None, unchanged_rows=None, unchanged_cols=None,
    )
    if partials.row_flags is None:
        return stats
    rows, cols = partials.row_flags.numel(), partials.col_flags.numel()
    return ElementStats(**{
        **stats.__dict__, "rows": rows, "cols": cols,
        "unchanged_rows": rows - int(partials.row_flags.sum()),
        "unchanged_cols": cols - int(partials.col_flags.sum()),
    })


def element_stats_triton(a: torch.Tensor, b: torch.Tensor, config: KernelConfig = DEFAULT_CONFIG) -> ElementStats:
    """`ElementStats` of W0 = a, W1 = b with the fused Triton kernel (one read of each element).

    Same shape and dtype (bfloat16, float16, float32), contiguous, on one CUDA device (or CPU
    under TRITON_INTERPRET=1). Integer fields equal `element_stats_cpu` exactly; float sums agree
    to float32 rounding. Zero-size tensors give all-zero counters without a launch.
    """
    _check(a, b)
    if a.numel() == 0:
        stats = ElementStats.zero()
        extra = {"numel": 0}
        if a.dtype == torch.float32:
            extra.update(hidden_by_bf16=0, hidden_by_fp16=0)
        if a.dim() == 2:
            extra.update(rows=a.shape[0], cols=a.shape[1], unchanged_rows=a.shape[0], unchanged_cols=a.shape[1])
        return ElementStats(**{**stats.__dict__, **extra})
    return reduce_partials(launch_element_stats(a, b, config))
