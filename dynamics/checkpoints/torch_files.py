"""`torch.save` files (`pytorch_model*.bin`, `.pt`, `.pth`), loaded memory-mapped with `weights_only=True`."""

from __future__ import annotations

import logging
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


def load_weights_only(file: Path, stand_ins: Sequence[tuple[type, str]] = ()) -> object:
    """`torch.load(file, weights_only=True)`, memory-mapped for zip files, with DTensor support.

    `stand_ins` are (inert class, "module.Name") pairs a framework's file pickles (never the real
    classes: nothing beyond tensors and these plain containers is built). Refusals and broken files
    are CheckpointErrors naming the file.
    """
    import torch.distributed.tensor

    mesh_log = logging.getLogger("torch.distributed.device_mesh")
    level = mesh_log.level
    mesh_log.setLevel(logging.ERROR)  # a DeviceMesh unpickled without process groups warns; it is never used
    try:
        with torch.serialization.safe_globals(list(stand_ins)):
            return torch.load(file, map_location="cpu", weights_only=True, mmap=_is_zip(file))
    except pickle.UnpicklingError as e:
        found = _UNSAFE_GLOBAL.search(str(e))
        detail = f": {found.group(1)}" if found else ""
        raise CheckpointError(f"{file}: refused: needs pickle beyond tensors (not executed){detail}") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{file}: cannot load: {(str(e) or type(e).__name__).splitlines()[0]}") from e
    finally:
        mesh_log.setLevel(level)


def _load_state_dict(file: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The numeric tensors of `file` (unwrapping a nested state dict) and notes on what was left out.

    A file without model tensors (an optimizer state, ZeRO-3 placeholders, a DTensor shard of a
    multi-rank run) is a CheckpointError saying what it holds instead.
    """
    notes: list[str] = []
    obj = load_weights_only(file)
    if not _is_zip(file):
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
    _check_holds_weights(file, obj, state)
    ignored = [str(k) for k in obj if k not in state]
    if ignored:
        notes.append(f"{file.name}: ignored {len(ignored)} non-tensor or non-numeric entries: {_listing(ignored)}")
    return state, notes


def _check_holds_weights(file: Path, obj: dict, state: dict[str, torch.Tensor]) -> None:
    """Raise unless `state` holds full model tensors; say what `file` holds instead."""
    from torch.distributed.tensor import DTensor

    if {"state", "param_groups"} <= obj.keys():
        raise CheckpointError(f"{file}: holds an optimizer state (state, param_groups), not model weights")
    if not state:
        keys = _listing([str(k) for k in obj]) or "nothing"
        raise CheckpointError(f"{file}: holds no model tensors (top-level entries: {keys})")
    shards = [name for name, t in state.items() if isinstance(t, DTensor)]
    if shards:
        mesh = state[shards[0]].device_mesh.mesh
        raise CheckpointError(f"{file}: holds DTensor shards of a {mesh.numel()}-rank run ({len(shards)} tensors), "
                              f"not full weights; open the folder holding every rank file")
    if all(t.numel() == 0 for t in state.values()):
        raise CheckpointError(f"{file}: holds only empty placeholder tensors ({len(state)} names), not weights "
                              "(ZeRO-3 model states: open the DeepSpeed checkpoint folder)")


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
