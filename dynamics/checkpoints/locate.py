"""Find the weight files behind a path: a file, a HF folder, a PEFT adapter folder, or a trainer
folder that holds exactly one of those a few levels down."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

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


@dataclass(frozen=True)
class WeightFiles:
    """What to open: `kind` of files, the files themselves, the folder holding config.json, and
    notes on how they were found."""

    kind: Literal["safetensors", "torch", "lora"]
    files: tuple[Path, ...]
    folder: Path
    notes: tuple[str, ...] = ()


def locate_weights(path: Path) -> WeightFiles:
    """The weight files `path` stands for; a folder without weights is searched to depth SEARCH_DEPTH."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_file():
        return _weight_file(path)
    found = _weights_in_folder(path)
    if found is not None:
        return found
    folders = _folders_with_weights(path, SEARCH_DEPTH)
    if not folders:
        raise CheckpointError(
            f"{path}: no weights found (looked for {', '.join(_MARKERS)} here and in subfolders"
            f" up to depth {SEARCH_DEPTH})"
        )
    if len(folders) > 1:
        listing = ", ".join(str(f.relative_to(path)) for f in folders)
        raise CheckpointError(f"{path}: {len(folders)} subfolders hold weights ({listing}); pass one of them")
    inner = _weights_in_folder(folders[0])
    return replace(inner, notes=(f"using subfolder {folders[0].relative_to(path)}",))


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
    if name.endswith(".safetensors.index.json"):
        return WeightFiles("safetensors", shards_from_index(file), file.parent)
    if name.endswith(".bin.index.json"):
        return WeightFiles("torch", shards_from_index(file), file.parent)
    if file.suffix == ".safetensors":
        return WeightFiles("safetensors", (file,), file.parent)
    if file.suffix in (".bin", ".pt", ".pth"):
        return WeightFiles("torch", (file,), file.parent)
    raise CheckpointError(f"{file}: not a weight file (expected .safetensors, .bin, .pt, .pth or *.index.json)")


def _weights_in_folder(folder: Path) -> WeightFiles | None:
    if (folder / ADAPTER_CONFIG).is_file():
        for name in ADAPTER_FILES:
            if (folder / name).is_file():
                return WeightFiles("lora", (folder / name,), folder)
        raise CheckpointError(f"{folder}: {ADAPTER_CONFIG} without {' or '.join(ADAPTER_FILES)}")
    for kind, name in HF_WEIGHTS:
        if (folder / name).is_file():
            return WeightFiles(kind, (folder / name,), folder)
        index = folder / f"{name}.index.json"
        if index.is_file():
            return WeightFiles(kind, shards_from_index(index), folder)
    return None


def _folders_with_weights(folder: Path, depth: int) -> list[Path]:
    """Subfolders (not hidden) holding weights; the search does not descend into a folder that does."""
    found = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if any((sub / marker).is_file() for marker in _MARKERS):
            found.append(sub)
        elif depth > 1:
            found += _folders_with_weights(sub, depth - 1)
    return found
