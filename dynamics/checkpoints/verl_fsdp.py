"""verl FSDP / FSDP2 actor and critic shards, reassembled tensor by tensor without a process group.

Layout (verl's FSDPCheckpointManager): `global_step_N/<component>/model_world_size_W_rank_R.pt`
for R = 0..W-1, each a `torch.save` of the rank's sharded state dict: name -> DTensor whose
`_local_tensor` is the rank's piece, `device_mesh.mesh` the ranks, and `placements` one per mesh
dimension. FSDP2 writes Shard(0) on a 1-D mesh (chunks of ceil(n/W) rows, the last ones shorter or
empty); HSDP adds Replicate. The parameters are the fp32 weights the optimizer updates (verl's
masters). Beside them: `optim_world_size_W_rank_R.pt`, `extra_state_…`, `fsdp_config.json`, and
`huggingface/` with config.json. Loading DTensors weights-only needs `torch.distributed.tensor`
imported first; the files are memory-mapped, so a read touches one tensor's pieces.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from dynamics.checkpoints.base import Checkpoint, TensorInfo
from dynamics.checkpoints.torch_files import load_weights_only
from dynamics.errors import CheckpointError

RANK_FILE = re.compile(r"^model_world_size_(\d+)_rank_(\d+)\.pt$")
OPTIM_FILE = re.compile(r"^optim_world_size_(\d+)_rank_(\d+)\.pt$")
DEFAULT_COMPONENT = "actor"


def rank_files(folder: Path) -> tuple[Path, ...] | None:
    """The `model_world_size_W_rank_R.pt` files of `folder` in rank order; None when there are none.

    Raises CheckpointError for files of two world sizes or a missing rank.
    """
    found = [(m, f) for f in folder.iterdir() if (m := RANK_FILE.match(f.name)) and f.is_file()]
    if not found:
        return None
    sizes = sorted({int(m[1]) for m, _ in found})
    if len(sizes) > 1:
        raise CheckpointError(f"{folder}: model shards of world sizes {sizes}; keep the files of one run")
    world = sizes[0]
    by_rank = {int(m[2]): f for m, f in found}
    missing = [r for r in range(world) if r not in by_rank]
    if missing:
        raise CheckpointError(f"{folder}: model_world_size_{world}_rank_{missing[0]}.pt is missing "
                              f"({len(by_rank)} of {world} rank files present)")
    return tuple(by_rank[r] for r in range(world))


def components(folder: Path) -> dict[str, Path]:
    """verl components (`actor`, `critic`, …): subfolders of a step folder holding rank files."""
    return {sub.name: sub for sub in sorted(folder.iterdir())
            if sub.is_dir() and any(RANK_FILE.match(f.name) for f in sub.iterdir())}


@dataclass(frozen=True)
class _Layout:
    """How one tensor is spread over the rank files: global shape, dtype, mesh, placements."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    mesh: torch.Tensor
    placements: tuple


def open_verl_shards(path: Path, files: Sequence[Path]) -> Checkpoint:
    """The full tensors of the DTensor shards in `files` (rank order), each rebuilt on `read`."""
    import torch.distributed.tensor  # noqa: F401  (DTensor must be importable before the files are loaded)

    return assemble_shards(path, files, [_state_dict(file) for file in files])


def open_verl_moments(folder: Path) -> tuple[Checkpoint, Checkpoint, dict, int]:
    """Adam's moments of the verl FSDP component folder `folder`: (exp_avg, exp_avg_sq) as Checkpoints
    of full tensors rebuilt like the weights, the param group's settings and the steps taken.

    `optim_world_size_W_rank_R.pt` is each rank's `optimizer.state_dict()`: parameter index -> DTensor
    moments. verl gives AdamW `module.parameters()` in one group, so index i is the i-th parameter of
    the model shard's state dict in its saved order, tied aliases (one storage) counted once; every
    moment's global shape is checked against that parameter's.
    """
    import torch.distributed.tensor  # noqa: F401

    weights = rank_files(folder)
    optim = optim_files(folder)
    if weights is None or optim is None or len(weights) != len(optim):
        raise CheckpointError(f"{folder}: needs model_world_size_W_rank_R.pt and optim_world_size_W_rank_R.pt "
                              "of the same world size")
    model = load_weights_only(weights[0])
    names = _parameter_names(model)
    states = [load_weights_only(file) for file in optim]
    groups = states[0].get("param_groups") if isinstance(states[0], dict) else None
    if not isinstance(groups, list) or len(groups) != 1 or len(groups[0]["params"]) != len(names):
        count = [len(g["params"]) for g in groups] if isinstance(groups, list) else "no"
        raise CheckpointError(f"{optim[0]}: param groups of {count} parameters; expected one group of the "
                              f"{len(names)} parameters of {weights[0].name}")
    indices = groups[0]["params"]
    moments = []
    for key in ("exp_avg", "exp_avg_sq"):
        pieces = []
        for file, state in zip(optim, states):
            entries = {name: state["state"].get(index, {}).get(key) for name, index in zip(names, indices)}
            pieces.append({name: t for name, t in entries.items() if t is not None})
        for name, t in pieces[0].items():
            if tuple(t.shape) != tuple(model[name].shape):
                raise CheckpointError(f"{optim[0]}: tensor {name}: {key} of shape {list(t.shape)}, the weight is "
                                      f"{list(model[name].shape)} (parameter order differs)")
        moments.append(assemble_shards(folder, optim, pieces))
    step = next(iter(states[0]["state"].values()), {}).get("step", 0)
    return moments[0], moments[1], {k: v for k, v in groups[0].items() if k != "params"}, int(step)



def optim_files(folder: Path) -> tuple[Path, ...] | None:
    by_rank = {int(m[2]): f for f in folder.iterdir() if (m := OPTIM_FILE.match(f.name))}
    if not by_rank or sorted(by_rank) != list(range(len(by_rank))):
        return None
    return tuple(by_rank[r] for r in range(len(by_rank)))


def _parameter_names(model: dict) -> list[str]:
    """State-dict names in saved order, an alias of an earlier tensor's storage left out."""
    from torch.distributed.tensor import DTensor

    seen, names = set(), []
    for name, t in model.items():
        local = t._local_tensor if isinstance(t, DTensor) else t
        key = (local.untyped_storage().data_ptr(), local.storage_offset(), tuple(t.shape))
        if local.numel() == 0 or key not in seen:
            seen.add(key)
            names.append(name)
    return names


def assemble_shards(path: Path, files: Sequence[Path], states: list[dict[str, torch.Tensor]]) -> Checkpoint:
    """A Checkpoint of full tensors from per-rank dicts name -> DTensor piece (or a plain tensor, taken
    from rank 0), every piece checked against its layout."""
    from torch.distributed.tensor import DTensor

    names = list(states[0])
    for file, state in zip(files[1:], states[1:]):
        if set(state) != set(names):
            other = min(set(state) ^ set(names))
            raise CheckpointError(f"{file}: tensor {other} is not in every rank file of {files[0].parent}")
    layouts: dict[str, _Layout] = {}
    plain: list[str] = []
    for name in names:
        first = states[0][name]
        if isinstance(first, DTensor):
            layouts[name] = _layout(files[0], name, first, len(files))
        else:
            plain.append(name)
            layouts[name] = _Layout(tuple(first.shape), first.dtype, torch.arange(len(files)), ())
    for rank, (file, state) in enumerate(zip(files, states)):
        for name in names:
            _check_piece(file, name, state[name], layouts[name], rank, files[0])

    def read(name: str) -> torch.Tensor:
        layout = layouts.get(name)
        if layout is None:
            raise CheckpointError(f"{path}: no tensor named {name}")
        if not layout.placements:
            return states[0][name].clone(memory_format=torch.contiguous_format)
        full = torch.empty(layout.shape, dtype=layout.dtype)
        for rank, state in enumerate(states):
            box, primary = _box(layout, rank)
            if primary:
                target = full
                for dim, (start, size) in enumerate(box):
                    target = target.narrow(dim, start, size)
                target.copy_(state[name]._local_tensor)
        return full

    tensors = {name: TensorInfo(name, layout.dtype, layout.shape, files[0]) for name, layout in layouts.items()}
    dtypes = sorted({str(layout.dtype).removeprefix("torch.") for layout in layouts.values()})
    notes = [(f"verl FSDP: {len(files)} DTensor rank files in {files[0].parent}, reassembled per tensor"
              f" ({', '.join(dtypes)}: the parameters the optimizer updates)")]
    if plain:
        notes.append(f"{len(plain)} plain tensors (not DTensors) taken from rank 0: {', '.join(plain[:5])}")
    return Checkpoint(path, f"verl FSDP shards ({len(files)} ranks) in {files[0].parent}", tensors, read, notes=notes)


def _state_dict(file: Path) -> dict[str, torch.Tensor]:
    obj = load_weights_only(file)
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{file}: holds a {type(obj).__name__}, not a sharded state dict")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{file}: entry {bad[0]!r} is not a tensor (not a verl model shard)")
    return obj


def _layout(file: Path, name: str, tensor: torch.Tensor, world: int) -> _Layout:
    from torch.distributed.tensor import Replicate, Shard

    mesh = tensor.device_mesh.mesh
    placements = tuple(tensor.placements)
    for placement in placements:
        if type(placement) not in (Shard, Replicate):
            raise CheckpointError(
                f"{file}: tensor {name}: placement {type(placement).__name__} ({placement}) is not supported (only Shard(d) and Replicate;"
                " _StridedShard from FSDP2 with tensor parallelism needs the strided layout of its plan)")
    if mesh.numel() != world or sorted(mesh.flatten().tolist()) != list(range(world)):
        raise CheckpointError(f"{file}: tensor {name}: device mesh {mesh.tolist()} does not match the {world} rank files")
    return _Layout(tuple(tensor.shape), tensor.dtype, mesh, placements)


def _box(layout: _Layout, rank: int) -> tuple[list[tuple[int, int]], bool]:
    """((start, size) per dim of the piece `rank` holds, whether it is the copy to use). Chunks as
    DTensor cuts them: ceil(n/k) per chunk, mesh dimensions in order; a Replicate mesh dimension
    keeps only its first coordinate as the copy to use."""
    coordinate = (layout.mesh == rank).nonzero()[0].tolist()
    box = [(0, size) for size in layout.shape]
    primary = True
    for mesh_dim, placement in enumerate(layout.placements):
        index, count = coordinate[mesh_dim], layout.mesh.shape[mesh_dim]
        if placement.is_replicate():
            primary = primary and index == 0
            continue
        start, size = box[placement.dim]
        chunk = math.ceil(size / count)
        low = min(index * chunk, size)
        box[placement.dim] = (start + low, min(chunk, size - low))
    return box, primary


def _check_piece(file: Path, name: str, tensor: torch.Tensor, layout: _Layout, rank: int, first: Path) -> None:
    from torch.distributed.tensor import DTensor

    if not layout.placements:
        if isinstance(tensor, DTensor) or tuple(tensor.shape) != layout.shape or tensor.dtype != layout.dtype:
            raise CheckpointError(f"{file}: tensor {name}: differs in kind, shape or dtype from {first.name}")
        return
    if not isinstance(tensor, DTensor) or tuple(tensor.shape) != layout.shape or tensor.dtype != layout.dtype:
        raise CheckpointError(f"{file}: tensor {name}: not a DTensor of global shape {list(layout.shape)} "
                              f"and dtype {layout.dtype} as in {first.name}")
    if tuple(tensor.placements) != layout.placements or not torch.equal(tensor.device_mesh.mesh, layout.mesh):
        raise CheckpointError(f"{file}: tensor {name}: placements or mesh differ from {first.name}")
    expected = tuple(size for _, size in _box(layout, rank)[0])
    got = tuple(tensor._local_tensor.shape)
    if got != expected:
        raise CheckpointError(f"{file}: tensor {name}: shard of shape {list(got)}, expected {list(expected)} "
                              f"for rank {rank} of {list(layout.shape)} under {list(layout.placements)}")
