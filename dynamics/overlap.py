"""`overlap`: how consistently several runs from one base update the same weights.

Per tensor, with M_r the update mask of run r (`dynamics.masks.changed_mask` under `rule`): the counters
of `OverlapCounts` (|M_r|, |M_i ∩ M_j|, elements changed by every run and by none) and, for 2-D tensors,
the row and column profiles of the consensus map C = (1/R) Σ_r M_r. The registered overlap metrics
(`dynamics.metrics`: Jaccard against its chance pq/(p+q−pq), overlap coefficient, shares) are derived
from the counters, per tensor, module kind, layer and model.

Streams tensor by tensor: memory holds one tensor of the base, of each run, their R masks and the vote
counts (plus the kept vote maps with `save_consensus`, one byte per element).

Example:
    >>> result = overlap("runs/base", ["runs/grpo-s1", "runs/grpo-s2", "runs/grpo-s3"])  # doctest: +SKIP
    >>> result.to_json()["by_module_kind"]["q"]["mean_jaccard"]                          # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from dynamics.api import open_pair
from dynamics.checkpoints import Checkpoint, open_checkpoint
from dynamics.devices import resolve_device
from dynamics.errors import DynamicsError
from dynamics.masks import ChangeRule, changed_mask, rule_name
from dynamics.naming import layer_index, module_kind
from dynamics.overlap_counts import OverlapCounts, run_pairs
from dynamics.overlap_result import OverlapRecord, OverlapResult

MAX_RUNS = 255  # vote counts are uint8


def overlap(
    base: str | Path | Checkpoint,
    runs: Sequence[str | Path | Checkpoint],
    *,
    rule: ChangeRule = "bitwise",
    device: str = "auto",
    save_consensus: bool = False,
    strict: bool = False,
) -> OverlapResult:
    """Cross-run consistency of `runs` (each a checkpoint or adapter on `base`), see the module docstring.

    Args:
        base: the common base checkpoint.
        runs: R ≥ 2 tuned checkpoints (PEFT adapters are merged onto the base).
        rule: "bitwise" (default), "eta" (Def. 2.1, η = 1e-3) or an absolute tolerance τ.
        device: where masks are formed ("auto": CUDA when present).
        save_consensus: keep every tensor's vote map Σ_r M_r (uint8) for HDF5.
        strict: any tensor that does not pair with some run is a PairingError.

    Tensors that do not pair with every run are listed in `OverlapResult.not_in_all_runs`.
    """
    if not 2 <= len(runs) <= MAX_RUNS:
        raise DynamicsError(f"overlap needs 2 to {MAX_RUNS} runs, got {len(runs)}")
    target = resolve_device(device)
    base_ckpt = base if isinstance(base, Checkpoint) else open_checkpoint(base)
    opened = [open_pair(base_ckpt, run, strict=strict) for run in runs]
    by_run = [{p.name: p for p in pairs} for _, _, pairs, _ in opened]
    names = [p.name for p in opened[0][2] if all(p.name in pairs for pairs in by_run)]
    all_names = set().union(*by_run)
    records, consensus = [], {}
    for name in names:
        stored = base_ckpt.read(name).to(target)
        masks = []
        for (_, tuned, _, _), pairs in zip(opened, by_run):
            dtype = pairs[name].compare_dtype
            masks.append(changed_mask(stored.to(dtype), tuned.read(name).to(target).to(dtype), rule))
        counts, votes = mask_counts(masks)
        record = OverlapRecord(name, layer_index(name), module_kind(name), tuple(votes.shape), counts)
        if votes.dim() == 2:
            rows, cols = consensus_profiles(votes, len(runs))
            record = replace(record, row_profile=rows, col_profile=cols)
        records.append(record)
        if save_consensus:
            consensus[name] = votes.cpu().numpy()
    return OverlapResult(
        base=str(base_ckpt.path), runs=[str(tuned.path) for _, tuned, _, _ in opened], rule=rule_name(rule),
        records=records, not_in_all_runs=sorted(all_names - set(names)), consensus=consensus,
    )


def mask_counts(masks: Sequence[torch.Tensor]) -> tuple[OverlapCounts, torch.Tensor]:
    """`OverlapCounts` of same-shaped bool masks M_1 … M_R, and their vote counts Σ_r M_r (uint8).

    Example (hand-checkable): M_1 = [1, 1, 0, 0], M_2 = [1, 0, 1, 0] → updated (2, 2), ∩ = 1,
    all = 1, none = 1; Jaccard 1/3.
    """
    votes = torch.zeros(masks[0].shape, dtype=torch.uint8, device=masks[0].device)
    for mask in masks:
        votes += mask
    counts = OverlapCounts(
        numel=votes.numel(),
        updated=tuple(int(m.sum()) for m in masks),
        intersections=tuple(int((masks[i] & masks[j]).sum()) for i, j in run_pairs(len(masks))),
        updated_by_all=int((votes == len(masks)).sum()),
        updated_by_none=int((votes == 0).sum()),
    )
    return counts, votes


def consensus_profiles(votes: torch.Tensor, runs: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Row and column means of C = votes / runs for an m × n map: ρ_i = (1/n) Σ_j C_ij, κ_j = (1/m) Σ_i C_ij."""
    m, n = votes.shape
    totals = votes.to(torch.int64)
    rows = (totals.sum(1).double() / (runs * n)).cpu()
    cols = (totals.sum(0).double() / (runs * m)).cpu()
    return tuple(rows.tolist()), tuple(cols.tolist())
