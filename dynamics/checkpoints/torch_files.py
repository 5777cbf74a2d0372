"""`torch.save` files (`pytorch_model*.bin`, `.pt`, `.pth`), loaded memory-mapped with `weights_only=True`."""

from __future__ import annotations

import pickle
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from dynamics.checkpoints.base import Checkpoint, TensorInfo
from dynamics.errors import CheckpointError

NESTED_STATE_DICT_KEYS = ("state_dict", "model", "module")
_INTEGER_DTYPES = {
    torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32, torch.uint64,
}
_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


def open_torch_files(path: Path, files: Sequence[Path]) -> Checkpoint:
    """Open torch-pickled state dicts (one file or the shards of one model).

    Zip files are memory-mapped, so tensor data is only read by `read(name)`, which returns an owned
    copy. Names sharing one storage at one offset are tied: the first is kept, the others go to `tied`.
    """
    stored: dict[str, torch.Tensor] = {}
    file_of: dict[str, Path] = {}
    notes: list[str] = []
    for file in files:
        state, file_notes = _load_state_dict(file)
        notes += file_notes
        for name, tensor in state.items():
            if name in stored:
                raise CheckpointError(f"{file}: tensor {name} is also in {file_of[name]}")
            stored[name] = tensor
            file_of[name] = file
    tied = _shared_storage_aliases(stored)
    for alias in tied:
        del stored[alias]
    if tied:
        notes.append(f"dropped {len(tied)} tensors sharing storage with another: "
                     + _listing([f"{alias} -> {kept}" for alias, kept in tied.items()]))
    tensors = {name: TensorInfo(name, t.dtype, tuple(t.shape), file_of[name]) for name, t in stored.items()}

    def read(name: str) -> torch.Tensor:
        tensor = stored.get(name)
        if tensor is None:
            raise CheckpointError(f"{path}: no tensor named {name}")
        try:
            return tensor.detach().clone(memory_format=torch.contiguous_format)
        except RuntimeError as e:
            raise CheckpointError(f"{file_of[name]}: {name}: {e}") from e

    return Checkpoint(path, _describe(files), tensors, read, notes=notes, tied=tied)


def _load_state_dict(file: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The numeric tensors of `file` (unwrapping a nested state dict) and notes on what was left out."""
    notes: list[str] = []
    try:
        mmap = _is_zip(file)
        obj = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        found = _UNSAFE_GLOBAL.search(str(e))
        detail = f": {found.group(1)}" if found else ""
        raise CheckpointError(f"{file}: refused: needs pickle beyond tensors (not executed){detail}") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{file}: cannot load: {(str(e) or type(e).__name__).splitlines()[0]}") from e
    if not mmap:
        notes.append(f"{file.name}: legacy (non-zip) torch file, loaded into memory")
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        key = next((k for k in NESTED_STATE_DICT_KEYS if isinstance(obj.get(k), dict)), None)
        if key is None:
            break
        obj = obj[key]
        notes.append(f"{file.name}: using the state dict nested under '{key}'")
    if not isinstance(obj, dict):
        raise CheckpointError(f"{file}: holds a {type(obj).__name__}, not a state dict")
    state = {k: v for k, v in obj.items() if isinstance(k, str) and _is_numeric_tensor(v)}
    ignored = [str(k) for k in obj if k not in state]
    if ignored:
        notes.append(f"{file.name}: ignored {len(ignored)} non-tensor or non-numeric entries: {_listing(ignored)}")
    return state, notes


def _is_numeric_tensor(value: object) -> bool:
    return isinstance(value, torch.Tensor) and (value.dtype.is_floating_point or value.dtype in _INTEGER_DTYPES)


def _is_zip(file: Path) -> bool:
    """Whether `file` starts like a zip archive, the test `torch.load` itself applies."""
    with open(file, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _shared_storage_aliases(stored: dict[str, torch.Tensor]) -> dict[str, str]:
    """alias -> first name for tensors viewing the same storage, offset, shape and strides."""
    first: dict[tuple, str] = {}
    aliases: dict[str, str] = {}
    for name, t in stored.items():
        if t.numel() == 0:
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.dtype, tuple(t.shape), t.stride())
        if key in first:
            aliases[name] = first[key]
        else:
            first[key] = name
    return aliases


def _listing(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def _describe(files: Sequence[Path]) -> str:
    if len(files) == 1:
        return f"torch file {files[0]}"
    return f"torch ({len(files)} shards) in {files[0].parent}"
