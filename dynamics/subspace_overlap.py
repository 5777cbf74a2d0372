"""Subspace overlap of two updates of one base: does a LoRA run move the weights where a full fine-tune does?

Per module, Δ_A = W_A − W0 (e.g. a LoRA adapter merged on the base: ΔW = (α/r)·B·A) and Δ_B = W_B − W0
(a full fine-tune of the same task), with U_A, U_B their top-r left singular vectors (V: right):
overlap_left = ‖U_Aᵀ U_B‖_F² / r = mean cos² of the r principal angles, 1 for the same subspace, and
r/m for a random one (the chance level; r/n on the right). r = min(rank, rank of either Δ); a module with
Δ_A = 0 or Δ_B = 0 gets None. Exact float64 SVDs, one module at a time.

Example:
    >>> rows = update_subspace_overlap("runs/base", "runs/lora-r16", "runs/full", rank=16)  # doctest: +SKIP
    >>> rows[0].overlap_left, rows[0].chance_left                                           # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dynamics.checkpoints import Checkpoint, open_checkpoint
from dynamics.lora_extract import Include, update_deltas


@dataclass(frozen=True)
class SubspaceOverlap:
    """One module: rank used, left / right overlaps ‖U_Aᵀ U_B‖_F² / r and their chance levels r/m, r/n."""

    name: str
    rank: int
    overlap_left: float | None
    overlap_right: float | None
    chance_left: float
    chance_right: float


def update_subspace_overlap(
    base: str | Path | Checkpoint,
    a: str | Path | Checkpoint,
    b: str | Path | Checkpoint,
    rank: int,
    *,
    include: Include | None = None,
    device: str = "cpu",
) -> list[SubspaceOverlap]:
    """`SubspaceOverlap` of every module both updates share (default: 2-D projection weights)."""
    base_ckpt = base if isinstance(base, Checkpoint) else open_checkpoint(base)
    deltas_b = dict(update_deltas(base_ckpt, b, include=include, device=device))
    rows = []
    for name, delta_a in update_deltas(base_ckpt, a, include=include, device=device):
        if name in deltas_b:
            rows.append(subspace_overlap(name, delta_a, deltas_b.pop(name), rank))
    return rows


def subspace_overlap(name: str, delta_a: torch.Tensor, delta_b: torch.Tensor, rank: int) -> SubspaceOverlap:
    """Overlap of the top-`rank` singular subspaces of two same-shaped updates (see the module docstring)."""
    m, n = delta_a.shape
    ua, sa, vha = torch.linalg.svd(delta_a.double(), full_matrices=False)
    ub, sb, vhb = torch.linalg.svd(delta_b.double(), full_matrices=False)
    r = min(rank, _numerical_rank(sa, m, n), _numerical_rank(sb, m, n))
    if r == 0:
        return SubspaceOverlap(name, 0, None, None, 0.0, 0.0)
    left = float((ua[:, :r].mT @ ub[:, :r]).square().sum()) / r
    right = float((vha[:r] @ vhb[:r].mT).square().sum()) / r
    return SubspaceOverlap(name, r, left, right, r / m, r / n)


def _numerical_rank(s: torch.Tensor, m: int, n: int) -> int:
    """Singular values above σ_1·max(m, n)·ε(float64) (torch.linalg.matrix_rank's default)."""
    if not s.numel() or s[0] == 0:
        return 0
    return int((s > s[0] * max(m, n) * torch.finfo(torch.float64).eps).sum())
