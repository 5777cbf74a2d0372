"""The two papers' own definitions, computed exactly beside ours (REFERENCES.md), one pair at a time.

Per tensor pair (W0 base, W1 tuned, stored dtype), as the papers define them:
- η-rule (the Path Not Taken, Def. 2.1): unchanged iff |W1 − W0| ≤ η·max(|W0|, |W1|), η = 1e-3 (±0 and
  bit-identical elements unchanged; `dynamics.masks.changed_mask(..., "eta")`); sparsity_bf16 = 1 − changed/n
  (Def. 2.2, model-wide element-weighted), beside our bitwise count.
- Δ == 0 / isclose(Δ, 0, atol=1e-5) with Δ = W1 − W0 computed in the stored dtype (RL Finetunes Small
  Subnetworks: both models in bf16, Δ in bf16); its layer figure is the unweighted mean of the per-tensor
  fractions (`PaperResult.subnetworks_layer_sparsity`).
2-D weights only (exact float64 SVDs of W0 and W1 on `device`):
- NSS = ‖σ(W1) − σ(W0)‖₂ / ‖σ(W0)‖₂ over all singular values (additive: Σ shift², Σ σ(W0)²).
- principal angles as a curve: for k = 1 … K, the largest principal angle (degrees) between span(U0_k) and
  span(U1_k) (left) and between span(V0_k), span(V1_k) (right), cos θ = σ_min(X0_kᵀ X1_k).
- update rank ratio: matrix_rank(Δ.float()) / min(m, n) (Δ in the stored dtype, torch's default tolerance).
- overlap with M_princ ∩ M_low^c: |U ∩ M| / |U| with U the bitwise update mask, M_princ the top-α of the
  rank-k reconstruction |W0^(k)| and M_low the bottom-β of |W0| (`dynamics.selection` rules), against the
  chance |M| / n.
Degenerate cases: σ(W0) = 0 → NSS None; no update → overlap None; ratios of empty groups None.

Example:
    >>> result = paper_metrics("runs/base", "runs/rl", angle_k=32)             # doctest: +SKIP
    >>> result.to_json()["summary"]["eta_sparsity"], result.records[0].angle_curve_left_deg[:4]  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, fields
from functools import reduce
from pathlib import Path

import torch

from dynamics.api import open_pair
from dynamics.checkpoints import Checkpoint
from dynamics.devices import resolve_device
from dynamics.documents import PAPER_METRICS_SCHEMA, write_json_document
from dynamics.masks import changed_mask, update_mask
from dynamics.metrics import paper_metrics_of
from dynamics.naming import MODULE_KINDS, layer_index, module_kind
from dynamics.pipeline import stream_pairs
from dynamics.selection import budget_count, top_count

SUBNETWORKS_ATOL = 1e-5


@dataclass(frozen=True)
class PaperCounts:
    """Additive counters behind the registered paper metrics (needs "paper").

    numel; changed_bitwise; changed_eta (η-rule); delta_zero / delta_within_atol: Δ (stored dtype) == 0,
    |Δ| ≤ 1e-5. 2-D tensors only (0 elsewhere): matrices, matrix_numel; spectrum_shift_sq = ‖σ(W1) − σ(W0)‖²,
    spectrum_base_sq = ‖σ(W0)‖²; delta_rank = matrix_rank(Δ), rank_capacity = min(m, n);
    updated = |U|, mask_size = |M_princ ∩ M_low^c|, updated_in_mask = |U ∩ M_princ ∩ M_low^c|.
    """

    numel: int = 0
    changed_bitwise: int = 0
    changed_eta: int = 0
    delta_zero: int = 0
    delta_within_atol: int = 0
    matrices: int = 0
    matrix_numel: int = 0
    spectrum_shift_sq: float = 0.0
    spectrum_base_sq: float = 0.0
    delta_rank: int = 0
    rank_capacity: int = 0
    updated: int = 0
    mask_size: int = 0
    updated_in_mask: int = 0

    def __add__(self, other: PaperCounts) -> PaperCounts:
        return PaperCounts(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})


@dataclass(frozen=True)
class PaperRecord:
    """One tensor: counters plus its principal-angle curves (degrees, index k − 1; empty unless 2-D)."""

    name: str
    layer: int | None
    module_kind: str
    shape: tuple[int, ...]
    counts: PaperCounts
    angle_curve_left_deg: tuple[float, ...] = ()
    angle_curve_right_deg: tuple[float, ...] = ()

    def to_row(self) -> dict:
        return {"name": self.name, "layer": self.layer, "module_kind": self.module_kind, "shape": list(self.shape),
                **_row(self.counts), "angle_curve_left_deg": list(self.angle_curve_left_deg),
                "angle_curve_right_deg": list(self.angle_curve_right_deg)}


@dataclass(frozen=True)
class PaperOptions:
    """angle_k: K of the angle curves; mask_k: rank of W0^(k) for M_princ; principal_fraction α and
    low_fraction β of M_princ and M_low."""

    angle_k: int = 64
    mask_k: int = 64
    principal_fraction: float = 0.5
    low_fraction: float = 0.5


@dataclass(frozen=True)
class PaperResult:
    """Per-tensor records of `paper_metrics` and their aggregates (counters summed)."""

    base: str
    tuned: str
    options: PaperOptions
    records: list[PaperRecord]

    def summary(self) -> PaperCounts:
        return _total(self.records)

    def by_module_kind(self) -> dict[str, PaperCounts]:
        groups: dict[str, list[PaperRecord]] = defaultdict(list)
        for r in self.records:
            groups[r.module_kind].append(r)
        return {k: _total(groups[k]) for k in MODULE_KINDS if k in groups}

    def by_layer(self) -> dict[int, PaperCounts]:
        return {layer: _total(rs) for layer, rs in self._layers().items()}

    def subnetworks_layer_sparsity(self, tolerance: bool = False) -> dict[int, float]:
        """Per layer, the unweighted mean over its tensors of the fraction with Δ == 0 (or |Δ| ≤ 1e-5 with
        `tolerance`): the layer figure of RL Finetunes Small Subnetworks (`--paper-compat`)."""
        key = "delta_within_atol" if tolerance else "delta_zero"
        return {layer: sum(getattr(r.counts, key) / r.counts.numel for r in rs) / len(rs)
                for layer, rs in self._layers().items()}

    def _layers(self) -> dict[int, list[PaperRecord]]:
        groups: dict[int, list[PaperRecord]] = defaultdict(list)
        for r in self.records:
            if r.layer is not None and r.counts.numel:
                groups[r.layer].append(r)
        return {layer: groups[layer] for layer in sorted(groups)}

    def to_json(self) -> dict:
        """The `dynamics.paper-metrics/1` document."""
        return {
            "schema": PAPER_METRICS_SCHEMA, "base": self.base, "tuned": self.tuned, "options": asdict(self.options),
            "summary": {"tensors": len(self.records), **_row(self.summary())},
            "by_module_kind": {k: _row(c) for k, c in self.by_module_kind().items()},
            "by_layer": {str(k): _row(c) for k, c in self.by_layer().items()},
            "subnetworks_layer_sparsity": {str(k): v for k, v in self.subnetworks_layer_sparsity().items()},
            "subnetworks_layer_sparsity_atol": {str(k): v for k, v in self.subnetworks_layer_sparsity(True).items()},
            "tensors": [r.to_row() for r in self.records],
        }

    def write_json(self, path: str | Path) -> None:
        write_json_document(self.to_json(), path)


def paper_metrics(
    base: str | Path | Checkpoint,
    tuned: str | Path | Checkpoint,
    options: PaperOptions = PaperOptions(),
    *,
    device: str = "cpu",
) -> PaperResult:
    """`PaperRecord` of every paired tensor (see the module docstring), one pair in memory at a time."""
    ckpt_a, ckpt_b, pairs, _ = open_pair(base, tuned)
    records = []
    for loaded in stream_pairs(ckpt_a, ckpt_b, pairs, resolve_device(device)):
        name = loaded.pair.name
        counts, left, right = pair_paper_counts(loaded.a, loaded.b, options)
        records.append(PaperRecord(name, layer_index(name), module_kind(name), tuple(loaded.a.shape), counts, left, right))
    return PaperResult(str(ckpt_a.path), str(ckpt_b.path), options, records)


def pair_paper_counts(
    a: torch.Tensor, b: torch.Tensor, options: PaperOptions = PaperOptions()
) -> tuple[PaperCounts, tuple[float, ...], tuple[float, ...]]:
    """Counters and angle curves of one pair in its stored dtype (2-D parts only for 2-D finite pairs)."""
    delta = b - a
    counts = PaperCounts(
        numel=a.numel(),
        changed_bitwise=int(update_mask(a, b).sum()),
        changed_eta=int(changed_mask(a, b, "eta").sum()),
        delta_zero=int((delta == 0).sum()),
        delta_within_atol=int((delta.float().abs() <= SUBNETWORKS_ATOL).sum()),
    )
    finite = bool(torch.isfinite(a).all() and torch.isfinite(b).all())
    if a.dim() != 2 or min(a.shape) < 1 or not finite:
        return counts, (), ()
    w0, w1 = a.double(), b.double()
    u0, s0, vh0 = torch.linalg.svd(w0, full_matrices=False)
    u1, s1, vh1 = torch.linalg.svd(w1, full_matrices=False)
    update = update_mask(a, b)
    mask = _principal_not_low(w0, u0, s0, vh0, options)
    counts = PaperCounts(**{
        **asdict(counts), "matrices": 1, "matrix_numel": a.numel(),
        "spectrum_shift_sq": float((s1 - s0).square().sum()), "spectrum_base_sq": float(s0.square().sum()),
        "delta_rank": int(torch.linalg.matrix_rank(delta.float())), "rank_capacity": min(a.shape),
        "updated": int(update.sum()), "mask_size": int(mask.sum()), "updated_in_mask": int((update & mask).sum()),
    })
    k = min(options.angle_k, min(a.shape))
    return counts, angle_curve(u0[:, :k], u1[:, :k]), angle_curve(vh0[:k].mT, vh1[:k].mT)


def angle_curve(x0: torch.Tensor, x1: torch.Tensor) -> tuple[float, ...]:
    """For k = 1 … K (K = columns): the largest principal angle in degrees between span(x0[:, :k]) and
    span(x1[:, :k]) (orthonormal columns), arccos of the smallest singular value of x0_kᵀ x1_k."""
    overlap = (x0.mT @ x1).double().cpu()
    curve = []
    for k in range(1, overlap.shape[0] + 1):
        cos_min = float(torch.linalg.svdvals(overlap[:k, :k]).min().clamp(0.0, 1.0))
        curve.append(math.degrees(math.acos(cos_min)))
    return tuple(curve)


def _principal_not_low(w0, u0, s0, vh0, options: PaperOptions) -> torch.Tensor:
    """M_princ ∩ M_low^c: top-α of |W0^(k)| (exact SVD) and not among the bottom-β of |W0| (ties by position)."""
    k = min(options.mask_k, s0.numel())
    reconstruction = ((u0[:, :k] * s0[:k]) @ vh0[:k]).abs()
    principal = top_count(reconstruction, budget_count(options.principal_fraction, w0.numel()))
    low = top_count(w0.abs(), budget_count(options.low_fraction, w0.numel()), largest=False)
    return principal & ~low


def _total(records: list[PaperRecord]) -> PaperCounts:
    return reduce(lambda total, r: total + r.counts, records, PaperCounts())


def _row(c: PaperCounts) -> dict:
    return {**asdict(c), **paper_metrics_of(c)}
