"""Adapter capacity of an update, and LoRA extraction: truncated SVD of Δ per module → a PEFT adapter.

For a 2-D weight, Δ = W1 − W0 (float64) = U Σ Vᵀ with σ_1 ≥ σ_2 ≥ …. The best rank-r approximation
(Eckart–Young) keeps the energy share E(r) = Σ_{i≤r} σ_i² / ‖Δ‖_F² and leaves ‖Δ − Δ_r‖_F² = (1 − E(r))·‖Δ‖_F².
`rank_for(share)` is the least r with E(r) ≥ share. Over several modules, a rank-r adapter on each holds
Σ_t Σ_{i≤r} σ_{t,i}² / Σ_t ‖Δ_t‖_F² (`AdapterCapacity.overall_energy`).

`extract_lora` writes Δ_r = B·A per module as a plain PEFT LoRA adapter: B = U_r Σ_r^½ (out × r),
A = Σ_r^½ V_rᵀ (r × in), lora_alpha = r per module (scale α/r = 1), so merging the adapter adds exactly
Δ_r (up to float32 storage of A and B). Modules with Δ = 0 get no adapter tensors.

Full SVDs run in float64 on `device`, one module at a time (min(m, n)² · 8 bytes of extra memory).

Example:
    >>> extraction = extract_lora("runs/base", "runs/rl", "adapters/rl-r16", rank=16)  # doctest: +SKIP
    >>> extraction.modules[0].energy_kept, extraction.modules[0].rank_for_energy["0.9"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from dynamics.api import open_pair
from dynamics.checkpoints import Checkpoint
from dynamics.devices import resolve_device
from dynamics.documents import LORA_EXTRACTION_SCHEMA, atomic_path
from dynamics.errors import DynamicsError
from dynamics.naming import is_projection_weight
from dynamics.pipeline import stream_pairs

ENERGY_SHARES: tuple[float, ...] = (0.9, 0.99)
CAPACITY_RANKS: tuple[int, ...] = (1, 4, 8, 16, 64, 256)
PEFT_KEY_PREFIX = "base_model.model."
Include = Callable[[str, tuple[int, ...]], bool]


@dataclass(frozen=True)
class UpdateSpectrum:
    """All singular values of one module's Δ (float64, descending) and ‖Δ‖_F²."""

    name: str
    shape: tuple[int, int]
    singular_values: tuple[float, ...]
    energy_total: float

    def energy(self, rank: int) -> float | None:
        """E(r) = Σ_{i≤r} σ_i² / ‖Δ‖_F² (r clamped to min(m, n)); None when Δ = 0."""
        if not self.energy_total:
            return None
        return min(1.0, sum(s * s for s in self.singular_values[:rank]) / self.energy_total)

    def rank_for(self, share: float) -> int | None:
        """Least r with E(r) ≥ share; None when Δ = 0."""
        if not self.energy_total:
            return None
        running = 0.0
        for r, s in enumerate(self.singular_values, start=1):
            running += s * s
            if running >= share * self.energy_total:
                return r
        return len(self.singular_values)

    def summary(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "energy_total": self.energy_total,
                "rank_for_energy": {f"{s:g}": self.rank_for(s) for s in ENERGY_SHARES},
                "energy_at_rank": {str(r): self.energy(r) for r in CAPACITY_RANKS}}


@dataclass(frozen=True)
class AdapterCapacity:
    """The update spectra of every included module."""

    modules: list[UpdateSpectrum]

    def overall_energy(self, rank: int) -> float | None:
        """Σ_t Σ_{i≤r} σ_{t,i}² / Σ_t ‖Δ_t‖_F²: what one rank-r adapter per module holds; None when Δ = 0."""
        total = sum(m.energy_total for m in self.modules)
        kept = sum(sum(s * s for s in m.singular_values[:rank]) for m in self.modules)
        return min(1.0, kept / total) if total else None

    def to_json(self) -> dict:
        return {"overall_energy_at_rank": {str(r): self.overall_energy(r) for r in CAPACITY_RANKS},
                "modules": [m.summary() for m in self.modules]}


@dataclass(frozen=True)
class ExtractedModule:
    """One module of an extracted adapter: its rank, the energy E(rank) it keeps, and its spectrum's needs."""

    module: str
    shape: tuple[int, int]
    rank: int
    energy_kept: float
    rank_for_energy: dict[str, int | None]


@dataclass(frozen=True)
class LoraExtraction:
    """What `extract_lora` wrote: the adapter folder, the modules (Δ ≠ 0), those skipped (Δ = 0), and
    energy_kept = Σ_t E_t(r_t)·‖Δ_t‖² / Σ_t ‖Δ_t‖², the share of the whole included update the adapter holds."""

    path: str
    base: str
    tuned: str
    modules: list[ExtractedModule]
    unchanged: list[str]
    energy_kept: float

    def to_json(self) -> dict:
        """The `dynamics.lora-extraction/1` document."""
        return {"schema": LORA_EXTRACTION_SCHEMA, **asdict(self)}


def update_deltas(
    base: str | Path | Checkpoint, tuned: str | Path | Checkpoint, *, include: Include | None = None,
    device: str = "cpu",
) -> Iterator[tuple[str, torch.Tensor]]:
    """(tensor name, Δ = W1 − W0 in float64 on `device`) for every paired tensor `include` takes
    (default: the 2-D projection weights), through `open_pair`, one pair at a time."""
    take = include or is_projection_weight
    ckpt_a, ckpt_b, pairs, _ = open_pair(base, tuned)
    pairs = [p for p in pairs if take(p.name, p.a.shape)]
    for loaded in stream_pairs(ckpt_a, ckpt_b, pairs, resolve_device(device)):
        yield loaded.pair.name, loaded.b.double() - loaded.a.double()


def update_spectrum(name: str, delta: torch.Tensor) -> UpdateSpectrum:
    """Every singular value of a 2-D Δ (float64) and ‖Δ‖_F²."""
    if delta.dim() != 2:
        raise DynamicsError(f"tensor {name}: an update spectrum needs a 2-D weight, got shape {list(delta.shape)}")
    values = torch.linalg.svdvals(delta.double()).cpu()
    return UpdateSpectrum(name, tuple(delta.shape), tuple(values.tolist()), float(delta.double().square().sum()))


def adapter_capacity(
    base: str | Path | Checkpoint, tuned: str | Path | Checkpoint, *, include: Include | None = None,
    device: str = "cpu",
) -> AdapterCapacity:
    """`UpdateSpectrum` of every included module: E(r) per rank, the rank each needs for 90% / 99%."""
    return AdapterCapacity([update_spectrum(n, d) for n, d in update_deltas(base, tuned, include=include, device=device)])


def extract_lora(
    base: str | Path | Checkpoint,
    tuned: str | Path | Checkpoint,
    out: str | Path,
    *,
    rank: int | None = None,
    energy: float | None = None,
    include: Include | None = None,
    device: str = "cpu",
) -> LoraExtraction:
    """Write a PEFT LoRA adapter to `out` that adds the truncated SVD of each included module's Δ.

    Exactly one of `rank` (the same r for every module, clamped to min(m, n)) or `energy` (per module the
    least r with E(r) ≥ energy, written as PEFT `rank_pattern` / `alpha_pattern`). Files: adapter_config.json
    (peft_type LORA, task_type CAUSAL_LM, target_modules = the module names) and adapter_model.safetensors
    (float32 lora_A / lora_B under `base_model.model.<module>`). Returns what each module kept.
    """
    if (rank is None) == (energy is None):
        raise DynamicsError("extract_lora: give exactly one of rank or energy")
    if rank is not None and rank < 1:
        raise DynamicsError(f"extract_lora: rank must be at least 1, got {rank}")
    if energy is not None and not 0.0 < energy <= 1.0:
        raise DynamicsError(f"extract_lora: energy must lie in (0, 1], got {energy}")
    ckpt_a, ckpt_b, _, _ = open_pair(base, tuned)
    tensors, modules, unchanged, ranks = {}, [], [], {}
    total = kept = 0.0
    for name, delta in update_deltas(ckpt_a, ckpt_b, include=include, device=device):
        module = name.removesuffix(".weight")
        if name == module:
            raise DynamicsError(f"{ckpt_b.path}: tensor {name}: LoRA targets `<module>.weight` tensors")
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        spectrum = UpdateSpectrum(name, tuple(delta.shape), tuple(s.cpu().tolist()), float(delta.square().sum()))
        if not spectrum.energy_total:
            unchanged.append(module)
            continue
        r = min(rank, len(s)) if rank is not None else spectrum.rank_for(energy)
        root = s[:r].sqrt()
        tensors[f"{PEFT_KEY_PREFIX}{module}.lora_B.weight"] = (u[:, :r] * root).float().contiguous()
        tensors[f"{PEFT_KEY_PREFIX}{module}.lora_A.weight"] = (root[:, None] * vh[:r]).float().contiguous()
        modules.append(ExtractedModule(module, spectrum.shape, r, spectrum.energy(r),
                                       {f"{x:g}": spectrum.rank_for(x) for x in ENERGY_SHARES}))
        ranks[module] = r
        total += spectrum.energy_total
        kept += spectrum.energy(r) * spectrum.energy_total
    if not modules:
        raise DynamicsError(f"{ckpt_b.path}: no included 2-D weight differs from {ckpt_a.path}; nothing to extract")
    _write_adapter(Path(out), tensors, ranks, str(ckpt_a.path))
    return LoraExtraction(str(out), str(ckpt_a.path), str(ckpt_b.path), modules, unchanged, kept / total)


def _write_adapter(folder: Path, tensors: dict[str, torch.Tensor], ranks: dict[str, int], base: str) -> None:
    """adapter_config.json + adapter_model.safetensors, each written atomically."""
    r = max(ranks.values())
    pattern = {re.escape(module): rank for module, rank in ranks.items() if rank != r}
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base,
        "r": r, "lora_alpha": r, "rank_pattern": pattern, "alpha_pattern": dict(pattern),
        "target_modules": sorted(ranks), "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
        "use_rslora": False, "use_dora": False, "init_lora_weights": True, "inference_mode": True,
        "modules_to_save": None,
    }
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "adapter_model.safetensors") as tmp:
        save_file(tensors, str(tmp))
    with atomic_path(folder / "adapter_config.json") as tmp:
        tmp.write_text(json.dumps(config, indent=1))
