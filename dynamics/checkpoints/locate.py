"""Find the weight files behind a path: a file, a HF folder, a PEFT adapter folder, a training
framework's folder (verl FSDP shards, DeepSpeed ZeRO, torch DCP, Megatron torch_dist), or a trainer
folder that holds exactly one of those a few levels down."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from dynamics.checkpoints import deepspeed_zero, torch_dcp, verl_fsdp
from dynamics.errors import CheckpointError

SEARCH_DEPTH = 3
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
# Single file first, then its index, as transformers does; safetensors before torch pickles.
HF_WEIGHTS: tuple[tuple[Literal["safetensors", "torch"], str], ...] = (
    ("safetensors", "model.safetensors"),
    ("torch", "pytorch_model.bin"),
)
_MARKERS = (*(f"{n}{suffix}" for _, n in HF_WEIGHTS for suffix in ("", ".index.json")), ADAPTER_CONFIG)
_FRAMEWORK_MARKERS = (torch_dcp.METADATA, deepspeed_zero.MODEL_STATES, "zero_pp_rank_*_model_states.pt",
                      "model_world_size_*_rank_*.pt", deepspeed_zero.LATEST, "latest_checkpointed_iteration.txt")
# Which checkpoint a step folder of verl / Megatron names in latest_checkpointed_iteration.txt.
_ITERATION_FOLDERS = ("global_step_{}", "iter_{:07d}")


@dataclass(frozen=True)
class WeightFiles:
    """What to open: `kind` of files, the files themselves, the folder holding config.json, and
    notes on how they were found."""

    kind: Literal["safetensors", "torch", "lora", "verl", "deepspeed", "dcp"]
    files: tuple[Path, ...]
    folder: Path
    notes: tuple[str, ...] = ()


def locate_weights(path: Path, component: str | None = None, masters: bool = False) -> WeightFiles:
    """The weight files `path` stands for; a folder without weights is searched to depth SEARCH_DEPTH.

    `component` picks a verl component folder (default `actor`); `masters` prefers a DeepSpeed
    folder (fp32 master weights) over the 16-bit HF weights an HF Trainer checkpoint holds beside it.
    """
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_file():
        return _weight_file(path)
    found = _weights_in_folder(path, component, masters)
    if found is not None:
        return found
    folders = _folders_with_weights(path, SEARCH_DEPTH)
    if not folders:
        raise CheckpointError(
            f"{path}: no weights found (looked for {', '.join(_MARKERS + _FRAMEWORK_MARKERS)} here and in"
            f" subfolders up to depth {SEARCH_DEPTH})"
        )
    if len(folders) > 1:
        listing = ", ".join(str(f.relative_to(path)) for f in folders)
        raise CheckpointError(f"{path}: {len(folders)} subfolders hold weights ({listing}); pass one of them")
    inner = _weights_in_folder(folders[0], component, masters)
    return replace(inner, notes=(f"using subfolder {folders[0].relative_to(path)}", *inner.notes))


def shards_from_index(index: Path) -> tuple[Path, ...]:
    """The shard files a `*.index.json` names in its weight_map, each checked to exist."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        shard_names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{index}: not a readable index with a weight_map ({e})") from e
    shards = tuple(index.parent / name for name in shard_names)
    for shard in shards:
        if not shard.is_file():
            raise CheckpointError(f"{index}: names shard {shard.name}, which does not exist")
    return shards


def _weight_file(file: Path) -> WeightFiles:
    name = file.name
    if verl_fsdp.RANK_FILE.match(name):
        raise CheckpointError(f"{file}: one rank's DTensor shard of a verl FSDP checkpoint, not full weights; "
                              f"open its folder {file.parent}")
    if deepspeed_zero.OPTIM_STATES.match(name):
        raise CheckpointError(f"{file}: one rank's DeepSpeed optimizer states (a slice of the fp32 masters), "
                              f"not model weights; open its folder {file.parent}")
    if deepspeed_zero.ZERO3_MODEL_STATES.match(name):
        raise CheckpointError(f"{file}: DeepSpeed ZeRO-3 model states hold placeholders, not weights; "
                              f"open its folder {file.parent}")
    if name.endswith(".safetensors.index.json"):
        return WeightFiles("safetensors", shards_from_index(file), file.parent)
    if name.endswith(".bin.index.json"):
        return WeightFiles("torch", shards_from_index(file), file.parent)
    if file.suffix == ".safetensors":
        return WeightFiles("safetensors", (file,), file.parent)
    if file.suffix in (".bin", ".pt", ".pth"):
        return WeightFiles("torch", (file,), file.parent)
    raise CheckpointError(f"{file}: not a weight file (expected .safetensors, .bin, .pt, .pth or *.index.json)")


def _weights_in_folder(folder: Path, component: str | None = None, masters: bool = False) -> WeightFiles | None:
    """What `folder` itself holds, in this order: a PEFT adapter; with `masters`, the DeepSpeed
    checkpoint its `latest` names; HF weights; DCP; verl rank files; DeepSpeed model states; verl
    component subfolders; the checkpoint a `latest` / `latest_checkpointed_iteration.txt` names."""
    if (folder / ADAPTER_CONFIG).is_file():
        for name in ADAPTER_FILES:
            if (folder / name).is_file():
                return WeightFiles("lora", (folder / name,), folder)
        raise CheckpointError(f"{folder}: {ADAPTER_CONFIG} without {' or '.join(ADAPTER_FILES)}")
    tag = deepspeed_zero.latest_tag(folder)
    if masters and tag is not None and deepspeed_zero.is_deepspeed_folder(tag):
        return WeightFiles("deepspeed", (), tag, (f"using {tag.name} named by {folder.name}/latest",))
    for kind, name in HF_WEIGHTS:
        if (folder / name).is_file():
            return WeightFiles(kind, (folder / name,), folder)
        index = folder / f"{name}.index.json"
        if index.is_file():
            return WeightFiles(kind, shards_from_index(index), folder)
    if torch_dcp.is_dcp_folder(folder):
        return WeightFiles("dcp", (), folder)
    shards = verl_fsdp.rank_files(folder)
    if shards is not None:
        return WeightFiles("verl", shards, folder)
    if deepspeed_zero.is_deepspeed_folder(folder):
        return WeightFiles("deepspeed", (), folder)
    found = verl_fsdp.components(folder)
    if found:
        return _component(folder, found, component)
    inner = tag or _latest_iteration(folder)
    if inner is not None:
        located = _weights_in_folder(inner, component, masters)
        if located is not None:
            return replace(located, notes=(f"using {inner.name}, the latest checkpoint in {folder}", *located.notes))
    return None


def _component(folder: Path, found: dict[str, Path], component: str | None) -> WeightFiles:
    """The verl component asked for, default the actor (or the only one)."""
    name = component or (verl_fsdp.DEFAULT_COMPONENT if verl_fsdp.DEFAULT_COMPONENT in found or len(found) > 1
                         else next(iter(found)))
    if name not in found:
        raise CheckpointError(f"{folder}: no verl component {name!r} (has {', '.join(found)})")
    inner = _weights_in_folder(found[name])
    others = [c for c in found if c != name]
    also = f"; also {', '.join(others)} (pick with component=)" if others else ""
    return replace(inner, notes=(f"using verl component {name}{also}",))


def _latest_iteration(folder: Path) -> Path | None:
    """The step folder verl / Megatron's `latest_checkpointed_iteration.txt` names, None without one."""
    file = folder / "latest_checkpointed_iteration.txt"
    if not file.is_file():
        return None
    text = file.read_text().strip()
    if not text.isdigit():
        raise CheckpointError(f"{file}: expected an iteration number, found {text[:40]!r}")
    for pattern in _ITERATION_FOLDERS:
        if (folder / pattern.format(int(text))).is_dir():
            return folder / pattern.format(int(text))
    raise CheckpointError(f"{file}: names iteration {text}, but {folder} has no "
                          f"{' or '.join(p.format(int(text)) for p in _ITERATION_FOLDERS)} folder")


def _holds_weights(folder: Path) -> bool:
    if any((folder / marker).is_file() for marker in _MARKERS + _FRAMEWORK_MARKERS if "*" not in marker):
        return True
    return any(any(folder.glob(marker)) for marker in _FRAMEWORK_MARKERS if "*" in marker) or bool(
        verl_fsdp.components(folder))


def _folders_with_weights(folder: Path, depth: int) -> list[Path]:
    """Subfolders (not hidden) holding weights; the search does not descend into a folder that does.

    A DCP folder of optimizer state only (accelerate's `optimizer_0/`) does not count."""
    found = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if _holds_weights(sub) and not _optimizer_only_dcp(sub):
            found.append(sub)
        elif depth > 1:
            found += _folders_with_weights(sub, depth - 1)
    return found


def _optimizer_only_dcp(folder: Path) -> bool:
    if not torch_dcp.is_dcp_folder(folder):
        return False
    metadata = torch_dcp.read_metadata(folder)
    return all(fqn.startswith(("optimizer.", "optim.")) for fqn in metadata.state_dict_metadata)
