"""`diff` and `diff_many`: the library entry points behind `dynamics diff` and `dynamics series`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dynamics.checkpoints import Checkpoint, normalise_pair, open_checkpoint
from dynamics.comparisons import Comparison, run_comparisons
from dynamics.devices import resolve_device
from dynamics.geometry_options import GeometryOptions
from dynamics.pairing import TensorPair, Unpaired, pair_tensors
from dynamics.result import DiffResult


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
        strict: raise PairingError on any tensor that does not pair cleanly (before reading any), and
            CheckpointError at the first tensor holding NaN/Inf (naming file and tensor).
        save_masks: keep bit-packed update masks in `DiffResult.masks`.
        geometry: also run the matrix pass (`dynamics.geometry`) on every 2-D pair with these options;
            same-shaped matrices are batched into one SVD call (up to
            `dynamics.comparisons.PENDING_GEOMETRY_ELEMENTS` per shape held at once). Pairs it cannot take (1-D, smaller than 2×2, NaN/Inf) are listed in
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
    return run_comparisons([Comparison(ckpt_a, ckpt_b, pairs, unpaired)], target, geometry=geometry,
                           save_masks=save_masks, progress=progress, strict=strict)[0]


def diff_many(
    comparisons: Sequence[tuple[str | Path, str | Path]],
    *,
    device: str = "auto",
    strict: bool = False,
    geometry: GeometryOptions | None = None,
    progress: bool = False,
    component: str | None = None,
    masters: bool = False,
    adapter_base: str | Path | None = None,
) -> list[DiffResult]:
    """`diff(a, b)` for every (a, b) in `comparisons`, in one pass that reads each stored tensor once
    (`dynamics.comparisons`): a series of N steps against the base and the previous step reads the base
    once and each step once, holding a few tensors at a time. Same options as `diff`. Each path is opened
    once (an adapter folder once per checkpoint it merges onto); name normalisation, done pair by pair,
    stays on that shared checkpoint.

    Example:
        >>> vs_base, vs_previous = diff_many([("base", "step-2"), ("step-1", "step-2")])
    """
    target = resolve_device(device, kernels=True)
    options = {"component": component, "masters": masters}
    base = None if adapter_base is None else open_checkpoint(adapter_base, **options)
    opened: dict[tuple[str, int], Checkpoint] = {}

    def get(path: str | Path, merge_base: Checkpoint | None) -> Checkpoint:
        is_adapter = (Path(path) / "adapter_config.json").is_file()
        key = (str(Path(path).resolve()), id(merge_base) if is_adapter else 0)
        if key not in opened:
            opened[key] = open_checkpoint(path, base=merge_base, **options)
        return opened[key]

    prepared = []
    for a, b in comparisons:
        ckpt_a = get(a, base)
        ckpt_a, ckpt_b, pairs, unpaired = open_pair(ckpt_a, get(b, base or ckpt_a), strict=strict)
        prepared.append(Comparison(ckpt_a, ckpt_b, pairs, unpaired))
    return run_comparisons(prepared, target, geometry=geometry, progress=progress, strict=strict)
