"""Matrix geometry of a 2-D weight pair (Gate II): how the update Δ = W1 − W0 sits in W0's spectrum.

Notation: W0 (base) and W1 (tuned) are m × n, Δ = W1.float() − W0.float(), everything in float32
on the tensors' device. W = U Σ Vᵀ with σ_1 ≥ σ_2 ≥ …; U_k, Σ_k, V_k are the top-k parts.
The top-k singular triplets come from `randomized_svd` (a blocked subspace iteration; batched over
a stack of same-shaped matrices) or, with `exact=True`, from torch.linalg.svd. W0 and W1 share one
random sketch, so their approximate subspaces move continuously with Δ and W1 = W0 gives equal ones.
Memory: float32 copies of W0, W1 and Δ plus the update mask, O((m + n)·(k + p)) for the subspaces,
and one row block (BLOCK_ELEMENTS) of the rank-k reconstruction at a time (three passes per mask: two of
radix select, one counting the mask per exponent bucket of |W0| for the stratified chance); the small l × l and k × k
decompositions run on the host. (Measured on an H100: a 152064 × 3584 bf16 pair peaks at 12.8 GiB.)

Degenerate cases give None, never NaN: Δ = 0 (energies, update ranks; angles are 0), W = 0 (no
subspace), an empty update mask (overlaps). A weight with numerical rank r < k (σ_i ≤ σ_1·√max(m,n)·ε)
uses its r nonzero directions only: the trailing singular vectors of a rank-deficient matrix are
arbitrary null-space directions, so counting them would make angles and energies arbitrary too.
NaN/Inf in W0 or W1 raise ValueError (the element pass reports them; geometry is undefined).

Example:
    >>> w0 = torch.randn(256, 128)
    >>> stats = geometry_stats(w0, w0 + 1e-3 * torch.randn(256, 128), k=16)
    >>> stats.k, stats.principal_energy_baseline == 16 * 16 / (256 * 128)
    (16, True)
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from dynamics.geometry_options import default_rank_k
from dynamics.kernels.elementwise_cpu import BITS_VIEW, SUPPORTED_DTYPES
from dynamics.masks import update_mask
from dynamics.svd import (
    OVERSAMPLE,
    POWER_ITERATIONS,
    exact_svd,
    gaussian_sketch,
    randomized_singular_values,
    randomized_svd,
)

GEOMETRY_MASK_PERCENTS: tuple[int, ...] = (1, 5, 10, 20)
RANK_ENERGY_RANKS: tuple[int, ...] = (1, 4, 16, 64, 256)

# Row blocks of the mask passes hold at most this many elements (float32 values + int32 keys).
BLOCK_ELEMENTS = 1 << 24
# Radix select on non-negative float32 bits: 2^11 high bins (exponent + 3 mantissa bits), 2^20 low.
_LOW_BITS = 20
_LOW_MASK = (1 << _LOW_BITS) - 1
_HIGH_BINS = 1 << (31 - _LOW_BITS)
# `geometry_stats_batched` stacks at most this many elements per SVD call (float32 copies of
# W0, W1 and Δ of that size live at once; a single larger matrix is processed alone).
BATCH_ELEMENTS = 1 << 28
_EPS32 = torch.finfo(torch.float32).eps


@dataclass(frozen=True)
class GeometryStats:
    """Geometry of one 2-D pair. Ratios lie in [0, 1]; None where undefined (see module docstring).

    k, k_clamped: rank used, min(requested k, m, n) (`default_rank_k(m, n)` when none was requested),
        and whether the request was clamped.
    exact: torch.linalg.svd (True) or `randomized_svd` (False).
    rank_a, rank_b: numerical ranks of W0, W1 among their top k (= k for any real weight).
    principal_angle_max_deg, principal_angle_mean_sin2: principal angles θ_i between span(U0_k) and
        span(U1_k) (cos θ_i = singular values of U0_kᵀU1_k): max θ in degrees and mean sin²θ
        (= 1 − ‖U0_kᵀU1_k‖_F²/k); *_right: the same for V0_k, V1_k. 0 when Δ = 0.
    spectrum_drift_mean, spectrum_drift_max: |σ_i(W1) − σ_i(W0)| / σ_i(W0) over i ≤ k, σ_i(W0) ≠ 0.
    stable_rank_a, stable_rank_b: ‖W‖_F² / σ_1².
    principal_energy: ρ_k = ‖U0_kᵀ Δ V0_k‖_F² / ‖Δ‖_F², baseline k²/(m·n) (a random direction's share).
    principal_energy_left / _right: ‖U0_kᵀ Δ‖_F² / ‖Δ‖_F² (baseline k/m), ‖Δ V0_k‖_F² / ‖Δ‖_F² (k/n).
    principal_mask_overlap[p]: |update ∩ top-p% of |U0_k Σ0_k V0_kᵀ|| / |update|, chance level p/100.
    low_magnitude_mask_overlap[p]: the same with the bottom-p% of |W0|.
    principal_mask_stratified_chance[p], low_magnitude_mask_stratified_chance[p]: the overlap expected if
        the observed flips were placed at random within each exponent bucket B_e of |W0| (see
        `stratified_chance`): Σ_e f_e·|M ∩ B_e| / Σ_e f_e·|B_e|, f_e = |update ∩ B_e| / |B_e|. A 16-bit
        weight flips only when |Δ| > ½·ULP(W0) and the ULP is constant within a bucket, so this is the
        null that precision alone sets. Empty ({}) in results written before it existed.
    update_stable_rank: ‖Δ‖_F² / σ_1(Δ)².
    update_effective_rank: exp(H(σ/Σσ)) over the top R = min(max(256, k), m, n) singular values of Δ
        (the whole spectrum when min(m, n) ≤ R, a lower bound of the full-spectrum value otherwise).
    rank_energy[r]: Σ_{i ≤ min(r, m, n)} σ_i(Δ)² / ‖Δ‖_F², the share a rank-r adapter could hold;
        ‖Δ‖_F² is exact, the σ_i(Δ) come from the same (randomized) top-R SVD, exact up to its error.
    singular_values_a / _b / _delta: top-k singular values of W0, W1, Δ.
    spectral_gap: σ_k/σ_{k+1} of W0 (k = rank_a); None when W0 has no (k+1)-th direction (k = min(m, n)
        or σ_{k+1} below the numerical-rank tolerance): then the subspace is exactly defined. σ_{k+1} comes
        from the same decomposition as σ_k (the randomized sketch holds k + OVERSAMPLE ≥ k + 1 columns).
    wedin_sin_bound: ‖Δ‖_2 / δ, δ = σ_k(W0) − σ_{k+1}(W0): Wedin's bound sin θ_max ≤ ‖Δ‖_2/δ on the
        rotation the update can cause (0 when Δ = 0; None without σ_{k+1} or when δ = 0).
    gap_flagged: δ ≤ ‖Δ‖_2 (Δ ≠ 0), i.e. the bound exceeds 1 and excludes no angle: the top-k subspace is
        not defined at the update's scale, so a large angle may be a swap of near-equal directions, not a
        rotation. Results written before these fields existed read back as None / False.
    """

    k: int
    k_clamped: bool
    exact: bool
    rank_a: int
    rank_b: int
    principal_angle_max_deg: float | None
    principal_angle_mean_sin2: float | None
    principal_angle_max_deg_right: float | None
    principal_angle_mean_sin2_right: float | None
    spectrum_drift_mean: float | None
    spectrum_drift_max: float | None
    stable_rank_a: float | None
    stable_rank_b: float | None
    principal_energy: float | None
    principal_energy_baseline: float
    principal_energy_left: float | None
    principal_energy_left_baseline: float
    principal_energy_right: float | None
    principal_energy_right_baseline: float
    principal_mask_overlap: dict[str, float | None]
    low_magnitude_mask_overlap: dict[str, float | None]
    update_stable_rank: float | None
    update_effective_rank: float | None
    rank_energy: dict[str, float | None]
    singular_values_a: tuple[float, ...]
    singular_values_b: tuple[float, ...]
    singular_values_delta: tuple[float, ...]
    principal_mask_stratified_chance: dict[str, float | None] = field(default_factory=dict)
    low_magnitude_mask_stratified_chance: dict[str, float | None] = field(default_factory=dict)
    spectral_gap: float | None = None
    wedin_sin_bound: float | None = None
    gap_flagged: bool = False


def skip_reason(shape: tuple[int, ...], dtype: torch.dtype) -> str | None:
    """Why a tensor gets no geometry ("not 2-D", "smaller than 2×2", "dtype int8"), or None if eligible."""
    if len(shape) != 2:
        return "not 2-D"
    if min(shape) < 2:
        return "smaller than 2×2"
    if dtype not in SUPPORTED_DTYPES:
        return f"dtype {str(dtype).removeprefix('torch.')}"
    return None


# --------------------------------------------------------------------------- mask overlaps


def _row_blocks(rows: int, cols: int) -> list[slice]:
    step = max(1, BLOCK_ELEMENTS // cols)
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


class _RankKReconstruction:
    """Row blocks of |U_k Σ_k V_kᵀ| from `scaled_u` = U_k Σ_k; the m × n product is never formed whole."""

    def __init__(self, scaled_u: torch.Tensor, v: torch.Tensor):
        self.scaled_u, self.v = scaled_u, v

    def __call__(self, rows: slice) -> torch.Tensor:
        return (self.scaled_u[rows] @ self.v.mT).abs()


class _AbsRows:
    """Row blocks of |W|."""

    def __init__(self, w: torch.Tensor):
        self.w = w

    def __call__(self, rows: slice) -> torch.Tensor:
        return self.w[rows].abs()


# Exponent field of each stored dtype: (bits per mantissa, exponent mask after the shift).
_EXPONENT_FIELD = {torch.float32: (23, 0xFF), torch.bfloat16: (7, 0xFF), torch.float16: (10, 0x1F)}
EXPONENT_BUCKETS = 256  # enough for the widest exponent field above (8 bits)


class _ExponentRows:
    """Row blocks of the biased exponent of |W| in W's own dtype (0 = zero and subnormals): the buckets
    B_e within which the ULP, and so the smallest |Δ| that flips a stored weight, is constant."""

    def __init__(self, w: torch.Tensor):
        self.w = w
        self.shift, self.mask = _EXPONENT_FIELD[w.dtype]

    def __call__(self, rows: slice) -> torch.Tensor:
        bits = self.w[rows].view(BITS_VIEW[self.w.dtype]).to(torch.int32)
        return ((bits >> self.shift) & self.mask).to(torch.int64)


@dataclass(frozen=True)
class _Threshold:
    """The mask of one p in mask order: `size` = p·N/100 elements, all with key < `key` plus a share of
    those with key == `key`; `beyond`/`beyond_update` count key < `key` (all / changed), `equal`/`equal_update`
    key == `key`."""

    size: float
    key: int
    beyond: int
    beyond_update: int
    equal: int
    equal_update: int

    @property
    def tie_share(self) -> float:
        """Share of the elements at the threshold value that the mask holds (ties split evenly)."""
        return (self.size - self.beyond) / self.equal

    @property
    def overlap_count(self) -> float:
        """|update ∩ mask|, ties counted by their share."""
        return self.beyond_update + self.equal_update * self.tie_share


def _mask_keys(values: Callable[[slice], torch.Tensor], largest: bool) -> Callable[[slice], torch.Tensor]:
    """Row blocks of int32 keys in mask order (the mask is the smallest keys)."""

    def keys_of(block: slice) -> torch.Tensor:
        bits = values(block).view(torch.int32)  # non-negative floats: bit order = value order
        return (0x7FFFFFFF - bits) if largest else bits

    return keys_of


def _mask_thresholds(keys_of: Callable[[slice], torch.Tensor], update: torch.Tensor) -> list[_Threshold]:
    """For p in GEOMETRY_MASK_PERCENTS, the top / bottom p% mask of the keys as a `_Threshold`.

    The mask holds exactly s = p·N/100 elements: all those strictly beyond the threshold value t (the
    ⌈s⌉-th value in mask order) plus the fraction (s − #beyond)/#equal of every element equal to t, so
    ties are split evenly (the expectation of a random tie-break) and the chance level is exactly p/100.
    Radix select on the float bits: 11 high bits, then the 20 low bits inside the threshold's high bin;
    `keys_of(rows)` is called twice per block, so memory stays at one block. The first histogram
    (2·2^11 counters) fits a GPU's shared memory.
    """
    rows, cols = update.shape
    numel = rows * cols
    blocks = _row_blocks(rows, cols)

    # Counters interleave (all, update): index 2·bin + changed.
    high = torch.zeros(2 * _HIGH_BINS, dtype=torch.int64, device=update.device)
    for block in blocks:
        flagged = ((keys_of(block) >> _LOW_BITS) << 1) | update[block]
        high += torch.bincount(flagged.reshape(-1), minlength=2 * _HIGH_BINS)
    high = high.view(_HIGH_BINS, 2).cpu()
    high_all, high_update = high.sum(1).cumsum(0).tolist(), high[:, 1].cumsum(0).tolist()

    plans = []  # per p: mask size s, target rank, high bin, counts before that bin
    for p in GEOMETRY_MASK_PERCENTS:
        size = p * numel / 100
        target = min(max(math.ceil(size), 1), numel)
        bin_ = bisect.bisect_left(high_all, target)
        before = (high_all[bin_ - 1], high_update[bin_ - 1]) if bin_ else (0, 0)
        plans.append((size, target, bin_, before))

    # Low counters: index changed·2^20 + low bits, so each half is contiguous (a scan over an outer
    # dimension is ~1000× slower on a GPU).
    low = {bin_: torch.zeros(2 << _LOW_BITS, dtype=torch.int64, device=update.device) for _, _, bin_, _ in plans}
    for block in blocks:
        keys = keys_of(block)
        high_keys = keys >> _LOW_BITS
        flagged = (keys & _LOW_MASK) | (update[block].to(torch.int32) << _LOW_BITS)
        for bin_, counts in low.items():
            selected = flagged[high_keys == bin_]
            if selected.numel():
                found = torch.bincount(selected)
                counts[: found.numel()] += found

    thresholds = []
    for size, target, bin_, (before_all, before_update) in plans:
        unchanged, changed = low[bin_].view(2, 1 << _LOW_BITS)
        running = (unchanged + changed).cumsum(0)
        wanted = torch.tensor([target - before_all], device=running.device)
        at = torch.searchsorted(running, wanted)  # low bin of the threshold value t
        below_all, below_update, equal_all, equal_update = torch.cat([
            running.index_select(0, at) - (unchanged + changed).index_select(0, at),
            changed.cumsum(0).index_select(0, at) - changed.index_select(0, at),
            (unchanged + changed).index_select(0, at),
            changed.index_select(0, at),
        ]).tolist()
        thresholds.append(_Threshold(size, (bin_ << _LOW_BITS) | int(at.item()), int(before_all + below_all),
                                     int(before_update + below_update), int(equal_all), int(equal_update)))
    return thresholds


def _bucket_totals(buckets: Callable[[slice], torch.Tensor], update: torch.Tensor) -> tuple[list[int], list[int]]:
    """Exact per-bucket counts (|B_e|, |update ∩ B_e|) over row blocks, e < EXPONENT_BUCKETS."""
    counts = torch.zeros(2 * EXPONENT_BUCKETS, dtype=torch.int64, device=update.device)
    for block in _row_blocks(*update.shape):
        counts += torch.bincount(((buckets(block) << 1) | update[block]).reshape(-1), minlength=2 * EXPONENT_BUCKETS)
    counts = counts.view(EXPONENT_BUCKETS, 2).cpu()
    return counts.sum(1).tolist(), counts[:, 1].tolist()


def stratified_chance(bucket_all: list[int], bucket_update: list[int], bucket_in_mask: list[float]) -> float | None:
    """Σ_e f_e·|M ∩ B_e| / Σ_e f_e·|B_e| with f_e = |U ∩ B_e| / |B_e| (the denominator is |U|).

    The expected overlap |U' ∩ M| / |U'| of an update U' that flips, in every bucket B_e, as many
    elements as U does but picks them uniformly at random inside the bucket. Equals the plain chance
    p when every bucket flips at the same rate; equals the observed overlap when flips are random
    within buckets (all of the overlap is precision). None when nothing changed.
    """
    changed = sum(bucket_update)
    if not changed:
        return None
    return sum(u / n * m for n, u, m in zip(bucket_all, bucket_update, bucket_in_mask) if n) / changed


def _mask_overlap_and_stratified_chance(
    values: Callable[[slice], torch.Tensor], update: torch.Tensor, largest: bool,
    buckets: Callable[[slice], torch.Tensor], totals: tuple[list[int], list[int]],
) -> tuple[list[float], list[float | None]]:
    """For p in GEOMETRY_MASK_PERCENTS: |update ∩ mask| (ties counted by their share, see
    `_mask_thresholds`; `values(rows)` gives a (rows, n) block of non-negative float32 values) and the
    magnitude-stratified chance overlap of that mask (`stratified_chance`).

    After the two radix-select passes a third pass over the same row blocks counts, per exponent
    bucket B_e, the elements beyond and at the threshold (exact int64 counts); |M ∩ B_e| = beyond_e +
    tie share·equal_e. Memory: one block plus 3·EXPONENT_BUCKETS counters per p.
    """
    keys_of = _mask_keys(values, largest)
    thresholds = _mask_thresholds(keys_of, update)
    cutoffs = torch.tensor([t.key for t in thresholds], dtype=torch.int32, device=update.device)
    # Per p: index bucket + EXPONENT_BUCKETS·state, state 0 beyond the threshold, 1 at it, 2 outside the mask.
    counts = torch.zeros(len(thresholds), 3 * EXPONENT_BUCKETS, dtype=torch.int64, device=update.device)
    for block in _row_blocks(*update.shape):
        keys, exponent = keys_of(block).reshape(-1), buckets(block).reshape(-1)
        for i in range(len(thresholds)):
            state = (keys >= cutoffs[i]).to(torch.int64) + (keys > cutoffs[i]).to(torch.int64)
            counts[i] += torch.bincount(exponent + EXPONENT_BUCKETS * state, minlength=3 * EXPONENT_BUCKETS)
    counts = counts.view(len(thresholds), 3, EXPONENT_BUCKETS).cpu().tolist()
    chances = []
    for t, (beyond, equal, _) in zip(thresholds, counts):
        in_mask = [b + t.tie_share * e for b, e in zip(beyond, equal)]
        chances.append(stratified_chance(*totals, in_mask))
    return [t.overlap_count for t in thresholds], chances


# --------------------------------------------------------------------------- geometry


def geometry_stats(
    w0: torch.Tensor,
    w1: torch.Tensor,
    update_mask: torch.Tensor | None = None,
    k: int | None = None,
    exact: bool = False,
    generator_seed: int = 0,
) -> GeometryStats:
    """Geometry of one 2-D pair (see `GeometryStats`); `update_mask` = bitwise-changed elements
    (default: W0 and W1 compared bit by bit); k = None: `default_rank_k(m, n)`. Randomized unless `exact`;
    same seed, same numbers."""
    return geometry_stats_batched([(w0, w1, update_mask)], k=k, exact=exact, generator_seed=generator_seed)[0]


def geometry_stats_batched(
    pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
    k: int | None = None,
    exact: bool = False,
    generator_seed: int = 0,
) -> list[GeometryStats]:
    """`geometry_stats` of every (W0, W1, update mask or None) pair, in order. Pairs of one shape, dtype
    and device are stacked (up to BATCH_ELEMENTS per stack) into one batched SVD call, so a GPU runs
    e.g. the 28 q_proj weights of a model together; the numbers equal those of unbatched calls."""
    for w0, w1, mask in pairs:
        if w0.shape != w1.shape or w0.dtype != w1.dtype or w0.device != w1.device:
            raise ValueError(f"W0 {tuple(w0.shape)} {w0.dtype} and W1 {tuple(w1.shape)} {w1.dtype} do not pair")
        reason = skip_reason(tuple(w0.shape), w0.dtype)
        if reason is not None:
            raise ValueError(f"no geometry for a {tuple(w0.shape)} {w0.dtype} tensor: {reason}")
        if mask is not None and mask.shape != w0.shape:
            raise ValueError(f"update mask {tuple(mask.shape)} does not match weight {tuple(w0.shape)}")
    groups: dict[tuple, list[int]] = {}
    for index, (w0, _, _) in enumerate(pairs):
        groups.setdefault((tuple(w0.shape), w0.dtype, w0.device), []).append(index)
    results: list[GeometryStats | None] = [None] * len(pairs)
    for (shape, _, _), indices in groups.items():
        per_stack = max(1, BATCH_ELEMENTS // (shape[0] * shape[1]))
        for start in range(0, len(indices), per_stack):
            chunk = indices[start : start + per_stack]
            stats = _geometry_stack([pairs[i] for i in chunk], k, exact, generator_seed)
            for i, s in zip(chunk, stats):
                results[i] = s
    return results


def _geometry_stack(pairs, k: int | None, exact: bool, seed: int) -> list[GeometryStats]:
    """All metrics of B same-shaped pairs: batched SVDs, then per-matrix scalars gathered as columns."""

    def stacked(tensors: list[torch.Tensor]) -> torch.Tensor:
        return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)

    update = stacked([update_mask(w0, w1) if mask is None else mask.to(torch.bool) for w0, w1, mask in pairs])
    a, b = stacked([p[0] for p in pairs]).float(), stacked([p[1] for p in pairs]).float()
    delta = b - a
    batch, m, n = a.shape
    full = min(m, n)
    kk = default_rank_k(m, n) if k is None else min(k, full)
    # W0 gets k + 1 singular values (σ_{k+1} for the spectral gap); its top-k triplets are unchanged.
    k_next = min(kk + 1, full)
    delta_rank = min(max(max(RANK_ENERGY_RANKS), kk), full)

    columns: dict[str, torch.Tensor] = {
        "norm_a": _frobenius_sq(a), "norm_b": _frobenius_sq(b), "norm_delta": _frobenius_sq(delta),
    }
    if not bool(torch.isfinite(torch.stack(list(columns.values()))).all()):
        raise ValueError("W0 or W1 holds NaN/Inf values; matrix geometry needs finite weights")

    if exact:
        u0, s0_next, v0 = exact_svd(a, k_next)
        u1, s1, v1 = exact_svd(b, kk)
        s_delta = torch.linalg.svdvals(delta)[:, :delta_rank]
    else:
        # W0 and W1 share a sketch (see the module docstring); Δ gets its own, wider one.
        sketch = gaussian_sketch(n, min(kk + OVERSAMPLE, full), seed, a.device)
        u0, s0_next, v0 = randomized_svd(a, k_next, power_iterations=POWER_ITERATIONS, sketch=sketch)
        u1, s1, v1 = randomized_svd(b, kk, power_iterations=POWER_ITERATIONS, sketch=sketch)
        sketch = gaussian_sketch(n, min(delta_rank + OVERSAMPLE, full), seed + 1, a.device)
        s_delta = randomized_singular_values(delta, delta_rank, power_iterations=POWER_ITERATIONS, sketch=sketch)
    u0, v0, s0 = u0[..., :kk], v0[..., :kk], s0_next[..., :kk]

    # Numerical rank: directions with σ_i ≤ σ_1·√max(m, n)·ε are dropped (their columns zeroed).
    tolerance = math.sqrt(max(m, n)) * _EPS32
    live0, live1 = s0 > s0[:, :1] * tolerance, s1 > s1[:, :1] * tolerance
    rank0, rank1 = live0.sum(1), live1.sum(1)
    u0, v0, s0_live = u0 * live0.unsqueeze(1), v0 * live0.unsqueeze(1), s0 * live0
    u1, v1 = u1 * live1.unsqueeze(1), v1 * live1.unsqueeze(1)
    columns.update(rank_a=rank0, rank_b=rank1, update_count=update.sum(dim=(1, 2)))
    for side, (x0, x1) in {"left": (u0, u1), "right": (v0, v1)}.items():
        sin2_max, sin2_mean, cos_min = _principal_angles(x0, x1, rank0, rank1)
        columns.update({f"sin2_max_{side}": sin2_max, f"sin2_mean_{side}": sin2_mean, f"cos_min_{side}": cos_min})

    drift = (s1 - s0).abs() / torch.where(live0, s0, 1.0) * live0
    columns.update(drift_mean=drift.sum(1) / rank0.clamp(min=1), drift_max=drift.amax(1))

    left = u0.mT @ delta  # (B, k, n)
    columns.update(
        energy_left=_frobenius_sq(left), energy_block=_frobenius_sq(left @ v0), energy_right=_frobenius_sq(delta @ v0)
    )
    del left

    scaled_u0 = u0 * s0_live.unsqueeze(1)
    overlaps = []
    for i in range(batch):
        buckets = _ExponentRows(pairs[i][0])
        totals = _bucket_totals(buckets, update[i])
        principal = _mask_overlap_and_stratified_chance(
            _RankKReconstruction(scaled_u0[i], v0[i]), update[i], True, buckets, totals)
        low_magnitude = _mask_overlap_and_stratified_chance(_AbsRows(a[i]), update[i], False, buckets, totals)
        overlaps.append((principal, low_magnitude))

    table = torch.stack([c.double().cpu() for c in columns.values()], dim=1)
    s0, s1, s_delta = s0_next.double().cpu(), s1.double().cpu(), s_delta.double().cpu()
    return [
        _assemble(dict(zip(columns, table[i].tolist())), (m, n), k, kk, exact, *overlaps[i],
                  s0[i].tolist(), s1[i].tolist(), s_delta[i].tolist(), tolerance)
        for i in range(batch)
    ]


def _frobenius_sq(x: torch.Tensor) -> torch.Tensor:
    """‖x‖_F² per matrix of a (B, m, n) stack, as float64 (the norm itself is reduced in float32)."""
    return torch.linalg.vector_norm(x, dim=(-2, -1)).double() ** 2


def _principal_angles(x0: torch.Tensor, x1: torch.Tensor, rank0: torch.Tensor, rank1: torch.Tensor):
    """sin²θ_max, mean sin²θ and cos θ_max between span(x0) and span(x1) (zeroed columns ignored).

    With p = min(rank0, rank1) angles, sines come from the residual X_small − X_large X_largeᵀ X_small
    (accurate for tiny angles, where 1 − cos² loses everything below ~1e-3 rad in float32), the
    cosine of the largest angle from the singular values of X0ᵀX1 (accurate near 90°).
    """
    overlap = x0.mT @ x1
    smaller = (rank0 <= rank1).view(-1, 1, 1)
    residual = torch.where(smaller, x0 - x1 @ (x1.mT @ x0), x1 - x0 @ (x0.mT @ x1))
    # k × k float64 decompositions on the host (tiny; latency-bound on a GPU).
    gram = (residual.mT @ residual).double().cpu()
    p = torch.minimum(rank0, rank1).cpu()
    sin2_max = torch.linalg.eigvalsh(gram)[:, -1].clamp(0, 1)
    sin2_mean = (gram.diagonal(dim1=1, dim2=2).sum(1) / p.clamp(min=1)).clamp(0, 1)
    cosines = torch.linalg.svdvals(overlap.double().cpu())
    cos_min = cosines.gather(1, (p - 1).clamp(min=0).view(-1, 1)).squeeze(1).clamp(0, 1)
    return sin2_max, sin2_mean, cos_min


def _ratio(numerator: float, denominator: float) -> float | None:
    return min(max(numerator / denominator, 0.0), 1.0) if denominator else None


def _assemble(
    row: dict[str, float], shape: tuple[int, int], k: int | None, kk: int, exact: bool,
    principal_overlap: tuple[list[float], list[float | None]], low_overlap: tuple[list[float], list[float | None]],
    s0_next: list[float], s1: list[float], s_delta: list[float], tolerance: float,
) -> GeometryStats:
    """One matrix's `GeometryStats` from its gathered float64 scalars (`s0_next`: W0's top k + 1 singular
    values where min(m, n) > k); applies the None rules."""
    s0 = s0_next[:kk]
    m, n = shape
    r0, r1 = int(row["rank_a"]), int(row["rank_b"])
    nd = row["norm_delta"]
    same = nd == 0.0
    has_subspace = r0 > 0 and not same

    def angles(side: str) -> tuple[float | None, float | None]:
        if same:
            return 0.0, 0.0
        if min(r0, r1) == 0:
            return None, None
        angle = math.degrees(math.atan2(math.sqrt(row[f"sin2_max_{side}"]), row[f"cos_min_{side}"]))
        return angle, row[f"sin2_mean_{side}"]

    def overlaps(counts: list[float], defined: bool) -> dict[str, float | None]:
        changed = row["update_count"]
        return {str(p): _ratio(c, changed) if defined else None for p, c in zip(GEOMETRY_MASK_PERCENTS, counts)}

    def chances(values: list[float | None], defined: bool) -> dict[str, float | None]:
        return {str(p): None if c is None or not defined else min(max(c, 0.0), 1.0)
                for p, c in zip(GEOMETRY_MASK_PERCENTS, values)}

    angle_max_left, angle_mean_left = angles("left")
    gap, wedin, flagged = _spectral_gap(s0_next, int(row["rank_a"]), tolerance, 0.0 if same else s_delta[0])
    angle_max_right, angle_mean_right = angles("right")
    positive = [x for x in s_delta if x > 0]
    total = sum(positive)
    entropy = -sum(x / total * math.log(x / total) for x in positive) if total else 0.0
    return GeometryStats(
        k=kk,
        k_clamped=k is not None and k > kk,
        exact=exact,
        rank_a=r0,
        rank_b=r1,
        principal_angle_max_deg=angle_max_left,
        principal_angle_mean_sin2=angle_mean_left,
        principal_angle_max_deg_right=angle_max_right,
        principal_angle_mean_sin2_right=angle_mean_right,
        spectrum_drift_mean=row["drift_mean"] if r0 else None,
        spectrum_drift_max=row["drift_max"] if r0 else None,
        stable_rank_a=row["norm_a"] / s0[0] ** 2 if s0[0] else None,
        stable_rank_b=row["norm_b"] / s1[0] ** 2 if s1[0] else None,
        principal_energy=_ratio(row["energy_block"], nd) if has_subspace else None,
        principal_energy_baseline=r0 * r0 / (m * n),
        principal_energy_left=_ratio(row["energy_left"], nd) if has_subspace else None,
        principal_energy_left_baseline=r0 / m,
        principal_energy_right=_ratio(row["energy_right"], nd) if has_subspace else None,
        principal_energy_right_baseline=r0 / n,
        principal_mask_overlap=overlaps(principal_overlap[0], r0 > 0),
        low_magnitude_mask_overlap=overlaps(low_overlap[0], True),
        update_stable_rank=None if same else nd / s_delta[0] ** 2,
        update_effective_rank=None if same else math.exp(entropy),
        rank_energy={str(r): _ratio(sum(x * x for x in s_delta[: min(r, m, n)]), nd) for r in RANK_ENERGY_RANKS},
        singular_values_a=tuple(s0),
        singular_values_b=tuple(s1),
        singular_values_delta=tuple(s_delta[:kk]),
        principal_mask_stratified_chance=chances(principal_overlap[1], r0 > 0),
        low_magnitude_mask_stratified_chance=chances(low_overlap[1], True),
        spectral_gap=gap,
        wedin_sin_bound=wedin,
        gap_flagged=flagged,
    )


def _spectral_gap(s0: list[float], rank: int, tolerance: float, delta_norm2: float):
    """(σ_r/σ_{r+1}, ‖Δ‖_2/(σ_r − σ_{r+1}), flagged) of W0 at its used rank r (see `GeometryStats`)."""
    if rank == 0 or rank >= len(s0) or s0[rank] <= s0[0] * tolerance:
        return None, None, False
    sigma_k, sigma_next = s0[rank - 1], s0[rank]
    gap = sigma_k - sigma_next
    wedin = delta_norm2 / gap if gap > 0 else (0.0 if delta_norm2 == 0 else None)
    return sigma_k / sigma_next, wedin, delta_norm2 > 0 and delta_norm2 >= gap
