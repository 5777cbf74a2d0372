"""Sharded parameters (FSDP, DeepSpeed ZeRO-3): each rank measures its local shard; counts are summed.

`local_tensor(p)` is what this rank holds of parameter `p`: the local shard of a DTensor (FSDP2), the
partition `ds_tensor` of a ZeRO-3 parameter, a flat FSDP1 parameter as it is (`use_orig_params=False`; with
True the original parameters are views of the local shard that cannot be told apart from whole tensors),
otherwise `p` itself.
A shard is measured flattened (1-D), so its row/column counters are None: rows split across ranks do
not add up. `reduce_records` sums every counter of the sharded tensors' records over the ranks (max for
max |Δ|) with three collectives in all; replicated tensors (DDP, ZeRO-1/2) are measured once, on each rank.
Adam's counts (`Monitor`'s optimizer pass) are taken only where the moments have the local tensor's shape,
so sharded parameters have none.
"""

from __future__ import annotations

from dataclasses import fields, replace

import torch
import torch.distributed as dist

from dynamics.element_stats import ElementStats
from dynamics.result import TensorRecord


def local_tensor(p: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(this rank's part of `p`, whether it is a shard of a tensor spread over ranks)."""
    if hasattr(p, "to_local") and hasattr(p, "placements"):
        sharded = any(placement.is_shard() for placement in p.placements)
        local = p.to_local()
        return (local.reshape(-1) if sharded else local), sharded
    if hasattr(p, "ds_tensor"):
        return p.ds_tensor.reshape(-1), True
    if getattr(p, "_is_flat_param", False):
        return p.reshape(-1), True
    return p, False


def distributed() -> bool:
    """True when torch.distributed runs with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _int_fields() -> list[str]:
    return [f.name for f in fields(ElementStats)
            if f.name not in ("sum_sq_delta", "sum_abs_delta", "sum_sq_a", "sum_sq_b", "max_abs_delta")]


_FLOAT_FIELDS = ("sum_sq_delta", "sum_abs_delta", "sum_sq_a", "sum_sq_b")


def _ints(s: ElementStats) -> list[int]:
    row = []
    for name in _int_fields():
        value = getattr(s, name)
        row.extend(value if isinstance(value, tuple) else [-1 if value is None else value])
    return row


def _from_ints(s: ElementStats, row: list[int]) -> dict:
    out, at = {}, 0
    for name in _int_fields():
        value = getattr(s, name)
        if isinstance(value, tuple):
            out[name] = tuple(row[at: at + len(value)])
            at += len(value)
        else:
            out[name] = None if value is None else row[at]
            at += 1
    return out


def reduce_records(records: list[TensorRecord], sharded: list[bool], device: torch.device) -> list[TensorRecord]:
    """The records with every sharded tensor's counters summed over all ranks (module docstring).

    Every rank must call it with the same tensors in the same order; None counters (e.g. hidden_by_bf16 of a
    bf16 pair, rows of a shard) stay None, as they are None on every rank."""
    chosen = [i for i, s in enumerate(sharded) if s]
    if not chosen:
        return records
    ints = torch.tensor([_ints(records[i].stats) for i in chosen], dtype=torch.int64, device=device)
    floats = torch.tensor([[getattr(records[i].stats, f) for f in _FLOAT_FIELDS] for i in chosen],
                          dtype=torch.float64, device=device)
    peak = torch.tensor([records[i].stats.max_abs_delta for i in chosen], dtype=torch.float64, device=device)
    for tensor, op in ((ints, dist.ReduceOp.SUM), (floats, dist.ReduceOp.SUM), (peak, dist.ReduceOp.MAX)):
        dist.all_reduce(tensor, op=op)
    out = list(records)
    for row, i in enumerate(chosen):
        s = records[i].stats
        summed = _from_ints(s, ints[row].tolist())
        summed.update({f: float(floats[row, j]) for j, f in enumerate(_FLOAT_FIELDS)}, max_abs_delta=float(peak[row]))
        out[i] = replace(records[i], stats=ElementStats(**summed))
    return out
