"""`diff`: the library entry point behind `dynamics diff`."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dynamics.checkpoints import Checkpoint, normalise_pair, open_checkpoint
from dynamics.devices import resolve_device
from dynamics.geometry import GeometryStats, geometry_stats_batched, skip_reason
from dynamics.geometry_options import GeometryOptions
from dynamics.kernels import element_stats
from dynamics.masks import pack_mask, update_mask
from dynamics.naming import layer_index, module_kind
from dynamics.pairing import TensorPair, Unpaired, pair_tensors
from dynamics.pipeline import stream_pairs
from dynamics.result import CheckpointSide, DiffResult, TensorRecord

# Same-shaped matrices held for one batched SVD call, per shape (float32 copies of that size are made).
PENDING_GEOMETRY_ELEMENTS = 1 << 26


def open_pair(a: str | Path | Checkpoint, b: str | Path | Checkpoint, *, strict: bool = False,
              component: str | None = None, masters: bool = False,
              adapter_base: str | Path | Checkpoint | None = None,
              ) -> tuple[Checkpoint, Checkpoint, list[TensorPair], Unpaired]:
    """The road every Δ takes: open A, open B (a PEFT adapter is merged onto `adapter_base`, default A),
    normalise names, pair by name. `component` / `masters` pick which weights each side's layout gives
    (`open_checkpoint`). Returns both checkpoints, the pairs, and what did not pair (`--strict`: PairingError)."""
    options = {"component": component, "masters": masters}
    base = adapter_base if adapter_base is None or isinstance(adapter_base, Checkpoint) else open_checkpoint(
        adapter_base, **options)
    ckpt_a = a if isinstance(a, Checkpoint) else open_checkpoint(a, base=base, **options)
    ckpt_b = b if isinstance(b, Checkpoint) else open_checkpoint(b, base=base or ckpt_a, **options)
    normalise_pair(ckpt_a, ckpt_b)
    pairs, unpaired = pair_tensors(ckpt_a, ckpt_b, strict=strict)
    return ckpt_a, ckpt_b, pairs, unpaired


def diff(
    a: str | Path | Checkpoint,
    b: str | Path | Checkpoint,
    *,
    device: str = "auto",
    strict: bool = False,
    save_masks: bool = False,
    geometry: GeometryOptions | None = None,
    progress: bool = False,
    component: str | None = None,
    masters: bool = False,
    adapter_base: str | Path | Checkpoint | None = None,
) -> DiffResult:
    """Compare checkpoint B (tuned) against A (base), tensor by tensor, in one fused pass each.

    Args:
        a, b: paths (HF folder, .safetensors, .bin/.pt, trainer folder) or opened Checkpoints;
            b may be a PEFT adapter folder, merged onto a.
        device: "auto", "cpu" or "cuda" (`dynamics.devices.resolve_device`).
        strict: raise PairingError on any tensor that does not pair cleanly.
        save_masks: keep bit-packed update masks in `DiffResult.masks`.
        geometry: also run the matrix pass (`dynamics.geometry`) on every 2-D pair with these options;
            same-shaped matrices are batched into one SVD call (up to PENDING_GEOMETRY_ELEMENTS per
            shape held at once). Pairs it cannot take (1-D, smaller than 2×2, NaN/Inf) are listed in
            `DiffResult.geometry_skipped`.
        progress: show a tqdm bar by bytes.
        component: the verl component of step folders on either side (default "actor"), e.g. "critic".
        masters: read fp32 master weights where a side holds them beside stored 16-bit weights
            (DeepSpeed ZeRO, Megatron); each side's notes say which were read.
        adapter_base: the checkpoint PEFT adapters on either side are merged onto (default: a), so
            two steps of a LoRA run compare as two merged models.

    Example:
        >>> result = diff("runs/base", "runs/grpo-step-100", geometry=GeometryOptions(k=64))
        >>> result.summary().changed
    """
    target = resolve_device(device, kernels=True)
    ckpt_a, ckpt_b, pairs, unpaired = open_pair(a, b, strict=strict, component=component, masters=masters,
                                                adapter_base=adapter_base)

    start = time.perf_counter()
    records, masks, geometry_skipped, bytes_read = [], {}, [], 0
    matrices = _MatrixBatches(geometry)
    bar = tqdm(total=sum(p.nbytes for p in pairs), unit="B", unit_scale=True, disable=not progress, desc="diff")
    with bar:
        for loaded in stream_pairs(ckpt_a, ckpt_b, pairs, target):
            pair = loaded.pair
            stats = element_stats(loaded.a, loaded.b)
            if geometry is not None:
                reason = skip_reason(pair.a.shape, pair.compare_dtype)
                if reason is None and stats.finite_pairs < stats.numel:
                    reason = "NaN/Inf values"
                if reason is None:
                    matrices.add(len(records), loaded.a, loaded.b)
                else:
                    geometry_skipped.append({"name": pair.name, "reason": reason})
            records.append(
                TensorRecord(
                    name=pair.name, layer=layer_index(pair.name), module_kind=module_kind(pair.name),
                    shape=pair.a.shape, dtype=str(pair.compare_dtype).removeprefix("torch."), stats=stats,
                )
            )
            if save_masks:
                masks[pair.name] = pack_mask(update_mask(loaded.a, loaded.b))
            bytes_read += pair.nbytes
            bar.update(pair.nbytes)
    for index, matrix in matrices.finish().items():
        records[index] = replace(records[index], geometry=matrix)
    return DiffResult(
        a=_side(ckpt_a), b=_side(ckpt_b), records=records, unpaired=unpaired, device=target.type,
        seconds=time.perf_counter() - start, bytes_read=bytes_read, packed_masks=masks,
        geometry_skipped=geometry_skipped,
    )


class _MatrixBatches:
    """Pending 2-D pairs grouped by shape; a group goes through `geometry_stats_batched` (one batched
    SVD) when it holds PENDING_GEOMETRY_ELEMENTS elements, the rest at `finish`. Results by record index."""

    def __init__(self, options: GeometryOptions | None):
        self.options = options
        self.pending: dict[tuple[int, ...], list[tuple[int, torch.Tensor, torch.Tensor]]] = defaultdict(list)
        self.done: dict[int, GeometryStats] = {}

    def add(self, index: int, a: torch.Tensor, b: torch.Tensor) -> None:
        group = self.pending[tuple(a.shape)]
        group.append((index, a, b))
        if len(group) * a.numel() >= PENDING_GEOMETRY_ELEMENTS:
            self._run(tuple(a.shape))

    def _run(self, shape: tuple[int, ...]) -> None:
        group = self.pending.pop(shape)
        stats = geometry_stats_batched([(a, b, None) for _, a, b in group], k=self.options.k, exact=self.options.exact)
        self.done.update((index, s) for (index, _, _), s in zip(group, stats))

    def finish(self) -> dict[int, GeometryStats]:
        for shape in list(self.pending):
            self._run(shape)
        return self.done


def _side(ckpt: Checkpoint) -> CheckpointSide:
    return CheckpointSide(path=str(ckpt.path), format=ckpt.format, notes=list(ckpt.notes), tied=dict(ckpt.tied))
