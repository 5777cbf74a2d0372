"""torch.distributed.checkpoint (DCP) folders, read one tensor at a time without a process group.

Layout: `.metadata` (a pickled `Metadata`: fqn -> TensorStorageMetadata(size, dtype, chunks) or
BytesStorageMetadata, `planner_data` fqn -> path in the saved nested dict, `storage_data` chunk ->
(file, offset, length)) and `__R_I.distcp` files holding each chunk as a small `torch.save` blob.
`dcp.save(model.state_dict())` gives plain names; accelerate's FSDP SHARDED_STATE_DICT
(`pytorch_model_fsdp_0/`) saves `{"model": state_dict}`, so fqns are `model.<name>`: the nested
path tells us the name. Megatron torch_dist (`iter_NNNNNNN/` with `common.pt` and metadata.json
`"sharded_backend": "torch_dist"`) keeps the model under its own names and the fp32 masters
under `optimizer.state.fp32_param.<name>`.

`.metadata` is read with an unpickler that builds only DCP's metadata dataclasses, torch.Size,
dtypes and paths (torch's own reader uses plain `pickle.load`); chunks go through
`dcp.load(..., no_dist=True)`, which loads each blob with `weights_only=True`.
"""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import torch

from dynamics.checkpoints.base import Checkpoint, TensorInfo
from dynamics.errors import CheckpointError

METADATA = ".metadata"
NESTED_STATE_DICT_KEYS = ("model", "module", "state_dict")
MEGATRON_MASTER_PREFIX = "optimizer.state.fp32_param."
_DCP_METADATA_CLASSES = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
        "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}


def is_dcp_folder(folder: Path) -> bool:
    return (folder / METADATA).is_file()


def is_megatron_folder(folder: Path) -> bool:
    """A Megatron torch_dist checkpoint: DCP files plus `common.pt`, or metadata.json naming torch_dist."""
    if (folder / "common.pt").is_file():
        return True
    try:
        return json.loads((folder / "metadata.json").read_text()).get("sharded_backend") == "torch_dist"
    except (OSError, ValueError, AttributeError):
        return False


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if name in _DCP_METADATA_CLASSES.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a DCP metadata class")


def read_metadata(folder: Path):
    """The `Metadata` of a DCP folder, unpickled with only DCP's metadata classes allowed."""
    import torch.distributed.checkpoint  # noqa: F401 - the classes the unpickler may build

    file = folder / METADATA
    try:
        with open(file, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{file}: not readable DCP metadata ({e})") from e
    if not hasattr(metadata, "state_dict_metadata") or not hasattr(metadata, "storage_data"):
        raise CheckpointError(f"{file}: not DCP metadata (a {type(metadata).__name__})")
    return metadata


def open_dcp_folder(path: Path, folder: Path, masters: bool = False) -> Checkpoint:
    """The model tensors of the DCP (or Megatron torch_dist) checkpoint in `folder`.

    With `masters`, a Megatron checkpoint's fp32 master weights replace the model weights they belong to.
    """
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = read_metadata(folder)
    _check_storage(folder, metadata)
    entries = {fqn: md for fqn, md in metadata.state_dict_metadata.items() if isinstance(md, TensorStorageMetadata)}
    megatron = is_megatron_folder(folder)
    fqn_of, notes = (_megatron_names if megatron else _model_names)(folder, entries, metadata.planner_data or {}, masters)
    if not fqn_of:
        held = ", ".join(sorted({fqn.split(".")[0] for fqn in metadata.state_dict_metadata})) or "nothing"
        raise CheckpointError(f"{folder}: DCP checkpoint holds no model tensors (top-level keys: {held})")

    class _Reader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            return metadata

    reader = _Reader(str(folder))
    tensors = {name: TensorInfo(name, entries[fqn].properties.dtype, tuple(entries[fqn].size), folder / METADATA)
               for name, fqn in fqn_of.items()}

    def read(name: str) -> torch.Tensor:
        import torch.distributed.checkpoint as dcp

        if name not in fqn_of:
            raise CheckpointError(f"{path}: no tensor named {name}")
        info = tensors[name]
        out = torch.empty(info.shape, dtype=info.dtype)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # no_dist is meant
                dcp.load({fqn_of[name]: out}, storage_reader=reader, no_dist=True)
        except Exception as e:
            first = (str(e) or type(e).__name__).strip().splitlines()[0]
            raise CheckpointError(f"{folder}: tensor {fqn_of[name]}: cannot read: {first}") from e
        return out

    kind = "Megatron torch_dist" if megatron else "torch DCP"
    return Checkpoint(path, f"{kind} checkpoint {folder}", tensors, read, notes=notes)


def _check_storage(folder: Path, metadata) -> None:
    """Every chunk's bytes exist: its file is there and long enough (a truncated .distcp fails here)."""
    sizes: dict[str, int] = {}
    for index, info in metadata.storage_data.items():
        file = folder / info.relative_path
        if info.relative_path not in sizes:
            if not file.is_file():
                raise CheckpointError(f"{file}: missing (named by {folder / METADATA} for {index.fqn})")
            sizes[info.relative_path] = file.stat().st_size
        if info.offset + info.length > sizes[info.relative_path]:
            raise CheckpointError(f"{file}: {sizes[info.relative_path]} bytes, but {index.fqn} needs bytes up to "
                                  f"{info.offset + info.length} (truncated?)")


def _model_names(folder: Path, entries: dict, planner_data: dict, masters: bool) -> tuple[dict[str, str], list[str]]:
    """name -> fqn of the model tensors; a `{"model": ...}` nesting is unwrapped, other top-level
    entries (optimizer states) are left out with a note."""
    paths = {fqn: planner_data.get(fqn, (fqn,)) for fqn in entries}
    tops = {path[0] for path in paths.values() if len(path) > 1}
    nested = next((key for key in NESTED_STATE_DICT_KEYS if key in tops), None)
    if nested is None:
        return {fqn: fqn for fqn in entries}, []
    fqn_of = {".".join(str(p) for p in path[1:]): fqn for fqn, path in paths.items() if path[0] == nested}
    notes = [f"using the state dict nested under '{nested}'"]
    others = sorted({str(path[0]) for path in paths.values()} - {nested})
    if others:
        notes.append(f"left out {len(entries) - len(fqn_of)} tensors under {', '.join(others)}")
    if masters:
        notes.append("no separate fp32 master weights in a torch DCP checkpoint; read the stored weights")
    return fqn_of, notes


def _megatron_names(folder: Path, entries: dict, planner_data: dict, masters: bool) -> tuple[dict[str, str], list[str]]:
    """name -> fqn: the model's own tensors, or with `masters` their `optimizer.state.fp32_param.` copies."""
    model = {fqn: fqn for fqn in entries if not fqn.startswith("optimizer.")}
    fp32 = {name: MEGATRON_MASTER_PREFIX + name for name in model if MEGATRON_MASTER_PREFIX + name in entries}
    notes = [f"Megatron names (not Hugging Face names); {len(entries) - len(model)} optimizer tensors left out"]
    if masters:
        if not fp32:
            raise CheckpointError(f"{folder}: Megatron checkpoint holds no optimizer.state.fp32_param.* master weights")
        model.update(fp32)
        notes.append(f"read: fp32 master weights (optimizer.state.fp32_param.*) for {len(fp32)} of {len(model)} "
                     "tensors, the rest as stored")
    elif fp32:
        notes.append(f"read: the stored model weights; fp32 masters of {len(fp32)} tensors with masters=True")
    return model, notes
