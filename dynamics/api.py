"""`diff`: the library entry point behind `dynamics diff`."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dynamics.checkpoints import Checkpoint, normalise_pair, open_checkpoint
from dynamics.errors import DynamicsError
from dynamics.geometry import geometry_stats, skip_reason
from dynamics.kernels import element_stats
from dynamics.masks import pack_mask, update_mask
from dynamics.naming import layer_index, module_kind
from dynamics.pairing import pair_tensors
from dynamics.pipeline import stream_pairs
from dynamics.result import CheckpointSide, DiffResult, TensorRecord


def resolve_device(device: str) -> torch.device:
    """"auto" → CUDA when a GPU and Triton are available, else CPU; "cuda" without a GPU is an error."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() and _triton_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise DynamicsError("--device cuda: no CUDA device is available (use --device cpu)")
    if device not in ("cpu", "cuda"):
        raise DynamicsError(f"--device {device}: expected auto, cpu or cuda")
    return torch.device(device)


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def diff(
    a: str | Path | Checkpoint,
    b: str | Path | Checkpoint,
    *,
    device: str = "auto",
    strict: bool = False,
    save_masks: bool = False,
    geometry: bool = False,
    rank_k: int = 64,
    geometry_exact: bool = False,
    progress: bool = False,
    component: str | None = None,
    masters: bool = False,
    adapter_base: str | Path | Checkpoint | None = None,
) -> DiffResult:
    """Compare checkpoint B (tuned) against A (base), tensor by tensor, in one fused pass each.

    Args:
        a, b: paths (HF folder, .safetensors, .bin/.pt, trainer folder) or opened Checkpoints;
            b may be a PEFT adapter folder, merged onto a.
        device: "auto", "cpu" or "cuda".
        strict: raise PairingError on any tensor that does not pair cleanly.
        save_masks: keep bit-packed update masks in `DiffResult.masks`.
        geometry: also run the matrix pass (`dynamics.geometry`) on every 2-D pair, top-`rank_k`
            subspaces by randomized SVD (exact SVD with `geometry_exact`); pairs it cannot take
            (1-D, smaller than 2×2, NaN/Inf) are listed in `DiffResult.geometry_skipped`.
        progress: show a tqdm bar by bytes.
        component: the verl component of step folders on either side (default "actor"), e.g. "critic".
        masters: read fp32 master weights where a side holds them beside stored 16-bit weights
            (DeepSpeed ZeRO, Megatron); each side's notes say which were read.
        adapter_base: the checkpoint PEFT adapters on either side are merged onto (default: a), so
            two steps of a LoRA run compare as two merged models.

    Example:
        >>> result = diff("runs/base", "runs/grpo-step-100")
        >>> result.summary().changed
    """
    target = resolve_device(device)
    options = {"component": component, "masters": masters}
    base = adapter_base if isinstance(adapter_base, Checkpoint) or adapter_base is None else open_checkpoint(
        adapter_base, **options)
    ckpt_a = a if isinstance(a, Checkpoint) else open_checkpoint(a, base=base, **options)
    ckpt_b = b if isinstance(b, Checkpoint) else open_checkpoint(b, base=base or ckpt_a, **options)
    normalise_pair(ckpt_a, ckpt_b)
    pairs, unpaired = pair_tensors(ckpt_a, ckpt_b, strict=strict)

    start = time.perf_counter()
    records, masks, geometry_skipped, bytes_read = [], {}, [], 0
    bar = tqdm(total=sum(p.nbytes for p in pairs), unit="B", unit_scale=True, disable=not progress, desc="diff")
    with bar:
        for loaded in stream_pairs(ckpt_a, ckpt_b, pairs, target):
            pair = loaded.pair
            stats = element_stats(loaded.a, loaded.b)
            matrix = None
            if geometry:
                reason = skip_reason(pair.a.shape, pair.compare_dtype)
                if reason is None and stats.finite_pairs < stats.numel:
                    reason = "NaN/Inf values"
                if reason is None:
                    matrix = geometry_stats(loaded.a, loaded.b, k=rank_k, exact=geometry_exact)
                else:
                    geometry_skipped.append({"name": pair.name, "reason": reason})
            records.append(
                TensorRecord(
                    name=pair.name, layer=layer_index(pair.name), module_kind=module_kind(pair.name),
                    shape=pair.a.shape, dtype=str(pair.compare_dtype).removeprefix("torch."),
                    stats=stats, geometry=matrix,
                )
            )
            if save_masks:
                masks[pair.name] = pack_mask(update_mask(loaded.a, loaded.b))
            bytes_read += pair.nbytes
            bar.update(pair.nbytes)
    return DiffResult(
        a=_side(ckpt_a), b=_side(ckpt_b), records=records, unpaired=unpaired, device=target.type,
        seconds=time.perf_counter() - start, bytes_read=bytes_read, masks=masks,
        geometry_skipped=geometry_skipped,
    )


def _side(ckpt: Checkpoint) -> CheckpointSide:
    return CheckpointSide(path=str(ckpt.path), format=ckpt.format, notes=list(ckpt.notes), tied=dict(ckpt.tied))
