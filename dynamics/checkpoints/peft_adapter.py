"""A PEFT LoRA adapter merged onto its base checkpoint, tensor by tensor: W + scale·(B @ A), or for
DoRA m / ‖W + scale·(B @ A)‖_row · (W + scale·(B @ A)), with m the saved magnitude vector.

Read from adapter_config.json and the adapter weights only; PEFT itself is never imported.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import torch

from dynamics.checkpoints.base import Checkpoint, TensorInfo
from dynamics.checkpoints.safetensors_files import open_safetensors_files
from dynamics.checkpoints.torch_files import open_torch_files
from dynamics.errors import CheckpointError

T = TypeVar("T")

KEY_PREFIX = "base_model.model."
# `<module>.lora_A.weight`, tolerating an adapter name as in `<module>.lora_A.default.weight`.
_LINEAR_KEY = re.compile(r"^(?P<module>.+?)\.(?P<part>lora_[AB])(?:\.[^.]+)?\.weight$")
_EMBEDDING_KEY = re.compile(r"^(?P<module>.+?)\.(?P<part>lora_embedding_[AB])(?:\.[^.]+)?$")
# Full copies that replace a base tensor: modules_to_save, and base layers saved with the adapter.
_MAGNITUDE_KEY = re.compile(r"^(?P<module>.+?)\.lora_magnitude_vector(?:\.[^.]+)?(?:\.weight)?$")
_COPY_KEY = re.compile(r"^(?P<module>.+?)\.(?:modules_to_save\.[^.]+|base_layer)\.(?P<param>[^.]+)$")
# adapter_config.json fields that turn on a LoRA variant merged neither as LoRA nor as DoRA (PEFT 0.21).
LORA_VARIANT_FIELDS = (
    "use_qalora", "use_bdlora", "alora_invocation_tokens",
    "velora_config", "monteclora_config", "arrow_config", "kasa_config",
)
# Adapter module names are matched to base names as they are, else without or with `model.`.
_NAME_MAPPINGS: tuple[tuple[str, Callable[[str], str]], ...] = (
    ("as is", lambda name: name),
    ("without a leading 'model.'", lambda name: name.removeprefix("model.")),
    ("with a leading 'model.'", lambda name: "model." + name),
)


@dataclass(frozen=True)
class LoraConfig:
    """The parts of adapter_config.json that decide the merge."""

    r: int
    alpha: float
    use_rslora: bool
    fan_in_fan_out: bool
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    modules_to_save: tuple[str, ...]
    use_dora: bool = False

    @classmethod
    def read(cls, file: Path) -> LoraConfig:
        """Parse `file`; any PEFT type but LoRA, or a LoRA variant other than DoRA, is a CheckpointError."""
        try:
            raw = json.loads(file.read_text())
            peft_type = raw.get("peft_type")
            variants = [name for name in LORA_VARIANT_FIELDS if raw.get(name)]
            if raw.get("init_lora_weights") == "mica":
                variants.append("init_lora_weights=mica")
            config = cls(
                r=int(raw.get("r", 8)),
                alpha=float(raw.get("lora_alpha", 8)),
                use_rslora=bool(raw.get("use_rslora", False)),
                fan_in_fan_out=bool(raw.get("fan_in_fan_out", False)),
                rank_pattern=dict(raw.get("rank_pattern") or {}),
                alpha_pattern=dict(raw.get("alpha_pattern") or {}),
                modules_to_save=tuple(raw.get("modules_to_save") or ()),
                use_dora=bool(raw.get("use_dora", False)),
            )
        except (OSError, ValueError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{file}: not a readable adapter config ({e})") from e
        if peft_type != "LORA":
            raise CheckpointError(f"{file}: PEFT type {peft_type} is not supported (LoRA only)")
        if variants:
            raise CheckpointError(f"{file}: LoRA variant {', '.join(variants)} is not supported (LoRA and DoRA only)")
        return config

    def rank_and_scale(self, module: str) -> tuple[int, float]:
        """(r, scale) for `module`: scale = alpha / r, or alpha / √r with rsLoRA.

        rank_pattern / alpha_pattern keys match as in PEFT: regex `(.*\\.)?(KEY)$` on the module name.
        """
        r = _pattern_value(self.rank_pattern, module, self.r)
        alpha = _pattern_value(self.alpha_pattern, module, self.alpha)
        return r, alpha / math.sqrt(r) if self.use_rslora else alpha / r

    def saves(self, module: str) -> bool:
        """Whether `module` is one of modules_to_save (matched on whole trailing name components)."""
        return any(module == saved or module.endswith("." + saved) for saved in self.modules_to_save)


@dataclass(frozen=True)
class LoraMerge:
    """One LoRA update: adapter keys of A (r × in) and B (out × r), its scale, whether the update
    is (B @ A)ᵀ: for fan_in_fan_out weights stored (in, out), and for embeddings (A is r × vocab),
    and for DoRA the key of the magnitude vector m (one entry per output feature)."""

    a_key: str
    b_key: str
    scale: float
    transpose: bool
    magnitude_key: str | None = None

    def apply(self, weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
              magnitude: torch.Tensor | None = None) -> torch.Tensor:
        """W + scale·(B @ A) (or its transpose) in float32, cast back to W's dtype. DoRA, as peft's
        merge: V = W + Δ in (out, in) layout, W' = (m / ‖V‖₂ per output row) · V."""
        delta = (b.float() @ a.float()) * self.scale
        if self.transpose:
            delta = delta.T
        merged = weight.float() + delta
        if magnitude is not None:
            rows = merged.T if self.transpose else merged
            factor = (magnitude.float() / torch.linalg.norm(rows, dim=1)).view(-1, 1)
            merged = (factor * rows).T if self.transpose else factor * rows
        return merged.to(weight.dtype).contiguous()


def open_lora_adapter(path: Path, folder: Path, adapter_file: Path, base: Checkpoint) -> Checkpoint:
    """`base` with the LoRA adapter in `folder` merged in; names, and tensors not touched, are the base's."""
    config = LoraConfig.read(folder / "adapter_config.json")
    opener = open_safetensors_files if adapter_file.suffix == ".safetensors" else open_torch_files
    adapter = opener(adapter_file, [adapter_file])
    merges, copies = _plan(adapter, config, adapter_file)
    mapping, to_base = _choose_mapping({**{n: m.a_key for n, m in merges.items()}, **copies}, base, adapter_file)
    merges = {to_base(name): merge for name, merge in merges.items()}
    copies = {to_base(name): key for name, key in copies.items()}
    tie_notes = _follow_ties(merges, copies, base, adapter_file)

    tensors = dict(base.tensors)
    for name in (*merges, *copies):  # a tied alias the adapter changes becomes a tensor of its own
        tensors.setdefault(name, replace(base.tensors[base.tied.get(name, name)], name=name))
    for name, key in copies.items():
        tensors[name] = replace(adapter.tensors[key], name=name)
    for name, merge in merges.items():
        _check_fit(adapter, adapter_file, merge, tensors[name])

    def read(name: str) -> torch.Tensor:
        if name not in tensors:
            raise CheckpointError(f"{path}: no tensor named {name}")
        weight = adapter.read(copies[name]) if name in copies else base.read(base.tied.get(name, name))
        merge = merges.get(name)
        if merge is None:
            return weight
        magnitude = None if merge.magnitude_key is None else adapter.read(merge.magnitude_key)
        return merge.apply(weight, adapter.read(merge.a_key), adapter.read(merge.b_key), magnitude)

    locations = {name: loc for name, loc in base.locations.items() if name not in merges and name not in copies}
    locations.update({n: adapter.locations[k] for n, k in copies.items() if n not in merges and k in adapter.locations})
    notes = [*base.notes, f"merged LoRA from {adapter_file} into {len(merges)} tensors"]
    if copies:
        notes.append(f"took {len(copies)} tensors from the adapter (modules_to_save / saved base layers)")
    if mapping != "as is":
        notes.append(f"adapter module names matched to the base {mapping}")
    notes += tie_notes
    rslora = ", rslora" if config.use_rslora else ""
    variant = "DoRA" if config.use_dora else "LoRA"
    return Checkpoint(
        path,
        f"PEFT {variant} adapter (r={config.r}, alpha={config.alpha:g}{rslora}) on {base.format}",
        tensors,
        read,
        notes=notes,
        tied={alias: kept for alias, kept in base.tied.items() if alias not in tensors},
        config=dict(base.config),
        locations=locations,
    )


def _plan(adapter: Checkpoint, config: LoraConfig, adapter_file: Path) -> tuple[dict[str, LoraMerge], dict[str, str]]:
    """(tensor name -> LoRA merge, tensor name -> adapter key of a full copy), in the adapter's names."""
    parts: dict[str, dict[str, str]] = {}
    copies: dict[str, str] = {}
    magnitudes: dict[str, str] = {}
    for key in adapter.tensors:
        name = key.removeprefix(KEY_PREFIX)
        if config.use_dora and (found := _MAGNITUDE_KEY.match(name)):
            magnitudes[found["module"]] = key
        elif found := _LINEAR_KEY.match(name) or _EMBEDDING_KEY.match(name):
            parts.setdefault(found["module"], {})[found["part"]] = key
        elif found := _COPY_KEY.match(name):
            copies[f"{found['module']}.{found['param']}"] = key
        elif config.saves(name.rpartition(".")[0]):
            copies[name] = key
        else:
            raise CheckpointError(
                f"{adapter_file}: tensor {key}: unsupported adapter content (not LoRA A/B or a saved module)"
            )
    merges = {}
    for module, found in parts.items():
        embedding = any(part.startswith("lora_embedding_") for part in found)
        prefix = "lora_embedding_" if embedding else "lora_"
        a_key, b_key = found.get(prefix + "A"), found.get(prefix + "B")
        if a_key is None or b_key is None or len(found) != 2:
            raise CheckpointError(
                f"{adapter_file}: {module}: needs one {prefix}A and one {prefix}B, has {sorted(found)}"
            )
        r, scale = config.rank_and_scale(module)
        a_shape, b_shape = adapter.tensors[a_key].shape, adapter.tensors[b_key].shape
        if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[0] != r or b_shape[1] != r:
            raise CheckpointError(
                f"{adapter_file}: {module}: A {list(a_shape)} and B {list(b_shape)} are not rank-{r} LoRA matrices"
            )
        magnitude = magnitudes.pop(module, None)
        if config.use_dora and (embedding or magnitude is None):
            raise CheckpointError(f"{adapter_file}: {module}: DoRA is supported on linear layers with a "
                                  "lora_magnitude_vector only")
        if magnitude is not None and adapter.tensors[magnitude].shape != (b_shape[0],):
            raise CheckpointError(f"{adapter_file}: {magnitude}: shape {list(adapter.tensors[magnitude].shape)}, "
                                  f"expected [{b_shape[0]}] (one magnitude per output feature)")
        merges[f"{module}.weight"] = LoraMerge(a_key, b_key, scale, transpose=embedding or config.fan_in_fan_out,
                                               magnitude_key=magnitude)
    if magnitudes:
        raise CheckpointError(f"{adapter_file}: tensor {next(iter(magnitudes.values()))}: a DoRA magnitude "
                              "without its LoRA A and B")
    return merges, copies


def _choose_mapping(targets: dict[str, str], base: Checkpoint, adapter_file: Path) -> tuple[str, Callable[[str], str]]:
    """The name mapping under which every target (name -> adapter key) exists in `base`."""
    def present(name: str) -> bool:
        return base.tied.get(name, name) in base.tensors

    description, to_base = max(_NAME_MAPPINGS, key=lambda m: sum(present(m[1](name)) for name in targets))
    for name, key in targets.items():
        if not present(to_base(name)):
            raise CheckpointError(
                f"{adapter_file}: tensor {key} targets {to_base(name)}, which {base.path} does not have"
            )
    return description, to_base


def _follow_ties(merges: dict[str, LoraMerge], copies: dict[str, str], base: Checkpoint,
                 adapter_file: Path) -> list[str]:
    """Adapters on a tied weight (`lm_head` on a tied-embedding base), as peft's merge_and_unload
    leaves them: a LoRA update lands on the shared weight, so it moves to the kept name (and the
    alias stays tied; its saved `base_layer` copy is the base weight, dropped); a full copy
    (modules_to_save) unties the alias, which becomes a tensor of its own. Mutates both maps."""
    notes = []
    for alias in [name for name in merges if name in base.tied]:
        kept = base.tied[alias]
        if kept in merges:
            raise CheckpointError(f"{adapter_file}: LoRA updates on both {alias} and {kept}, which are one tied "
                                  "weight in the base; merge them with peft and pass the merged model")
        merges[kept] = merges.pop(alias)
        copies.pop(alias, None)
        notes.append(f"LoRA on {alias} merged into {kept}, which it is tied to (peft's merge changes the shared weight)")
    for alias in [name for name in copies if name in base.tied and name not in merges]:
        notes.append(f"untied {alias} from {base.tied[alias]}: the adapter saves its own copy (modules_to_save)")
    return notes


def _check_fit(adapter: Checkpoint, adapter_file: Path, merge: LoraMerge, target: TensorInfo) -> None:
    a_shape, b_shape = adapter.tensors[merge.a_key].shape, adapter.tensors[merge.b_key].shape
    delta_shape = (a_shape[1], b_shape[0]) if merge.transpose else (b_shape[0], a_shape[1])
    if not target.dtype.is_floating_point or target.shape != delta_shape:
        raise CheckpointError(
            f"{adapter_file}: {merge.a_key}: LoRA update of shape {list(delta_shape)} does not fit"
            f" {target.name} ({target.dtype}, shape {list(target.shape)})"
        )


def _pattern_value(patterns: dict[str, T], module: str, default: T) -> T:
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default
