"""DeepSpeed ZeRO-1/2/3 checkpoint folders: the stored 16-bit weights, or the fp32 master weights.

Layout (`engine.save_checkpoint(dir)`; OpenRLHF, HF Trainer + DeepSpeed): `dir/latest` names the tag
folder, e.g. `global_step4/`, which holds
- ZeRO-1/2: `mp_rank_00_model_states.pt` with `module` (the full 16-bit state dict), `param_shapes`
  (one ordered name -> shape dict per parameter group), `shared_params` (alias -> kept name),
  `buffer_names`, `frozen_param_shapes` / `frozen_param_fragments`;
- ZeRO-3: `zero_pp_rank_R_mp_rank_00_model_states.pt` per rank, the same keys but `module` holds
  empty placeholders (and full buffers), frozen parameters as per-rank fragments;
- per rank `{bf16_}zero_pp_rank_R_mp_rank_00_optim_states.pt` whose `optimizer_state_dict` holds the
  fp32 masters: ZeRO-1/2 `single_partition_of_fp32_groups` (rank R's contiguous slice of each group's
  flat vector; the parameters lie back to back from offset 0 in `param_shapes` order, the vector is
  padded to a multiple of 2·W); ZeRO-3 `fp32_flat_groups` (each parameter cut in W slices of
  ceil(numel/W) elements, the last padded; rank R's slices back to back over its groups).
  These are the rules of DeepSpeed's `zero_to_fp32.py`, including its consistency checks.

The optimizer files pickle `ZeroStageEnum`, `LossScaler` / `DynamicLossScaler` and
`fragment_address`; inert stand-ins are registered under those names for a weights-only load, so
DeepSpeed is never imported and nothing but tensors and plain containers is built.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from dynamics.checkpoints.base import Checkpoint, TensorInfo
from dynamics.checkpoints.torch_files import load_weights_only
from dynamics.errors import CheckpointError

MODEL_STATES = "mp_rank_00_model_states.pt"
ZERO3_MODEL_STATES = re.compile(r"^zero_pp_rank_(\d+)_mp_rank_00_model_states\.pt$")
OPTIM_STATES = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_00_optim_states\.pt$")
LATEST = "latest"


class _Inert:
    """Attributes of a pickled DeepSpeed object, kept as plain data; none of its code exists here."""

    def __setstate__(self, state: object) -> None:
        self.__dict__.update(state if isinstance(state, dict) else {"state": state})


class _ZeroStage(int):
    """`ZeroStageEnum(n)` read back as the plain integer n."""


STAND_INS: tuple[tuple[type, str], ...] = (
    (_ZeroStage, "deepspeed.runtime.zero.config.ZeroStageEnum"),
    (_Inert, "deepspeed.runtime.fp16.loss_scaler.LossScaler"),
    (_Inert, "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler"),
    (_Inert, "deepspeed.utils.tensor_fragment.fragment_address"),
)


def is_deepspeed_folder(folder: Path) -> bool:
    return (folder / MODEL_STATES).is_file() or any(ZERO3_MODEL_STATES.match(f.name) for f in folder.iterdir())


def latest_tag(folder: Path) -> Path | None:
    """The tag folder DeepSpeed's `latest` file names, None without one."""
    latest = folder / LATEST
    if not latest.is_file():
        return None
    tag = latest.read_text().strip()
    if not tag or not (folder / tag).is_dir():
        raise CheckpointError(f"{latest}: names {tag!r}, which is not a folder in {folder}")
    return folder / tag


def open_deepspeed(path: Path, folder: Path, masters: bool = False) -> Checkpoint:
    """The 16-bit weights of the ZeRO checkpoint in `folder`, or with `masters` (and always for
    ZeRO-3, which stores no 16-bit weights) the fp32 master weights; buffers and frozen parameters,
    which have no master, as stored. Tied aliases (`shared_params`) go to `tied`."""
    model_files = _model_state_files(folder)
    states = [_model_states(file) for file in model_files]
    first = states[0]
    zero3 = model_files[0].name != MODEL_STATES
    tied = {alias: kept for alias, kept in (first.get("shared_params") or {}).items() if isinstance(alias, str)}
    module = {k: v for k, v in first["module"].items() if isinstance(v, torch.Tensor) and k not in tied}
    if not masters and not zero3:
        return _stored(path, model_files[0], first, module, tied)
    optim_files = _rank_files(folder, OPTIM_STATES, "optimizer-state")
    optim = [_optim_states(file) for file in optim_files]
    stage = int(optim[0]["zero_stage"])
    if (stage == 3) != zero3:
        raise CheckpointError(f"{optim_files[0]}: ZeRO stage {stage} does not match the model states {model_files[0].name}")
    world = optim[0]["partition_count"]
    world = max(world) if isinstance(world, list) else int(world)
    if world > len(optim_files):
        raise CheckpointError(f"{folder}: the optimizer-state file of rank {len(optim_files)} is missing "
                              f"(partition_count {world}, have ranks 0-{len(optim_files) - 1})")
    if world != len(optim_files):
        raise CheckpointError(f"{optim_files[0]}: partition_count {world}, but {len(optim_files)} optimizer-state files")
    groups_key = "fp32_flat_groups" if zero3 else "single_partition_of_fp32_groups"
    flats = [_flat_groups(file, states_, groups_key) for file, states_ in zip(optim_files, optim)]
    shapes = first["param_shapes"]
    slices = _zero3_slices(optim_files[0], shapes, flats) if zero3 else _zero12_slices(optim_files[0], shapes, flats)
    sources: dict[str, tuple[TensorInfo, object]] = {
        name: (TensorInfo(name, torch.float32, tuple(shape), optim_files[0]), reader)
        for name, (shape, reader) in slices.items()
    }
    kept = _as_stored(model_files, states, module, zero3, set(sources))
    sources.update(kept)

    def read(name: str) -> torch.Tensor:
        if name not in sources:
            raise CheckpointError(f"{path}: no tensor named {name}")
        return sources[name][1]()

    why = "masters=True" if masters else "ZeRO-3 model states hold placeholders, not 16-bit weights"
    notes = [(f"read: fp32 master weights from {groups_key} of {len(optim_files)} optimizer-state files "
              f"(ZeRO-{stage}; {why})")]
    if kept:
        notes.append(f"{len(kept)} buffers / frozen parameters have no fp32 master: read as stored "
                     f"({', '.join(sorted(kept)[:5])})")
    return Checkpoint(path, f"DeepSpeed ZeRO-{stage} fp32 masters in {folder}",
                      {name: info for name, (info, _) in sources.items()}, read, notes=notes, tied=tied)


def open_deepspeed_moments(folder: Path) -> tuple[dict[str, tuple[tuple[int, ...], object]], dict[str, dict]]:
    """Adam's moments of the ZeRO checkpoint in `folder`, cut into parameters exactly as the fp32 masters
    are (the flat `exp_avg` / `exp_avg_sq` of a group are partitioned like its fp32 group): name ->
    (shape, read) with read() -> (exp_avg, exp_avg_sq), and name -> its param group's hyper-parameters
    plus `step`. Moments live in `base_optimizer_state` (ZeRO-1/2) or
    `optimizer_state_dict` (ZeRO-3), one state per parameter group."""
    model_files = _model_state_files(folder)
    first = _model_states(model_files[0])
    zero3 = model_files[0].name != MODEL_STATES
    optim_files = _rank_files(folder, OPTIM_STATES, "optimizer-state")
    optim = [_optim_states(file) for file in optim_files]
    inner = [_inner_optimizer(file, states, zero3) for file, states in zip(optim_files, optim)]
    shapes = first["param_shapes"]
    cut = _zero3_slices if zero3 else _zero12_slices
    by_moment = {}
    for key in ("exp_avg", "exp_avg_sq"):
        flats = [[_group_state(file, state, group)[key].detach().reshape(-1) for group in range(len(state["param_groups"]))]
                 for file, state in zip(optim_files, inner)]
        by_moment[key] = cut(optim_files[0], shapes, flats)
    groups = inner[0]["param_groups"]
    if len(groups) != len(shapes):
        raise CheckpointError(f"{optim_files[0]}: {len(groups)} optimizer param groups for {len(shapes)} param_shapes groups")
    hyper = {}
    for group, (settings, names) in enumerate(zip(groups, shapes)):
        step = _group_state(optim_files[0], inner[0], group).get("step", 0)
        for name in names:
            hyper[name] = {**{k: v for k, v in settings.items() if k != "params"}, "step": int(step)}
    moments = {name: (shape, lambda m=read_m, v=by_moment["exp_avg_sq"][name][1]: (m(), v()))
               for name, (shape, read_m) in by_moment["exp_avg"].items()}
    return moments, hyper


def _inner_optimizer(file: Path, states: dict, zero3: bool) -> dict:
    inner = states.get("optimizer_state_dict" if zero3 else "base_optimizer_state")
    if not isinstance(inner, dict) or "state" not in inner or "param_groups" not in inner:
        raise CheckpointError(f"{file}: no Adam state (optimizer_state_dict has no base optimizer state and param groups)")
    return inner


def _group_state(file: Path, inner: dict, group: int) -> dict:
    state = inner["state"].get(group)
    if not isinstance(state, dict) or not {"exp_avg", "exp_avg_sq"} <= state.keys():
        raise CheckpointError(f"{file}: parameter group {group} has no exp_avg / exp_avg_sq (not Adam, or no step taken)")
    return state


def _stored(path: Path, file: Path, first: dict, module: dict[str, torch.Tensor], tied: dict[str, str]) -> Checkpoint:
    """ZeRO-1/2: the `module` weights as stored (bf16/fp16), checked against `param_shapes`."""
    for shapes in first["param_shapes"]:
        for name, shape in shapes.items():
            if name in module and tuple(module[name].shape) != tuple(shape):
                raise CheckpointError(f"{file}: tensor {name}: shape {list(module[name].shape)} differs from "
                                      f"param_shapes {list(shape)}")
    tensors = {name: TensorInfo(name, t.dtype, tuple(t.shape), file) for name, t in module.items()}

    def read(name: str) -> torch.Tensor:
        if name not in module:
            raise CheckpointError(f"{path}: no tensor named {name}")
        return module[name].clone(memory_format=torch.contiguous_format)

    dtypes = ", ".join(sorted({str(t.dtype).removeprefix("torch.") for t in module.values()}))
    notes = [f"read: the stored {dtypes} weights (module of {file.name}); fp32 master weights with masters=True"]
    return Checkpoint(path, f"DeepSpeed ZeRO-1/2 model states {file}", tensors, read, notes=notes, tied=tied)


def _model_state_files(folder: Path) -> list[Path]:
    if (folder / MODEL_STATES).is_file():
        return [folder / MODEL_STATES]
    return _rank_files(folder, ZERO3_MODEL_STATES, "ZeRO-3 model-state")


def _rank_files(folder: Path, pattern: re.Pattern, what: str) -> list[Path]:
    """Files of `pattern` for ranks 0..W-1, all present; a missing rank is a CheckpointError."""
    by_rank = {int(m[1]): f for f in folder.iterdir() if (m := pattern.match(f.name))}
    if not by_rank:
        raise CheckpointError(f"{folder}: no {what} files (zero_pp_rank_R_mp_rank_00_*.pt)")
    missing = [r for r in range(max(by_rank) + 1) if r not in by_rank]
    if missing:
        raise CheckpointError(f"{folder}: the {what} file of rank {missing[0]} is missing "
                              f"(have ranks {sorted(by_rank)})")
    return [by_rank[r] for r in range(len(by_rank))]


def _model_states(file: Path) -> dict:
    obj = load_weights_only(file)
    if not isinstance(obj, dict) or not isinstance(obj.get("module"), dict) or "param_shapes" not in obj:
        raise CheckpointError(f"{file}: not DeepSpeed model states (no module / param_shapes)")
    return obj


def _optim_states(file: Path) -> dict:
    obj = load_weights_only(file, STAND_INS)
    states = obj.get("optimizer_state_dict") if isinstance(obj, dict) else None
    if not isinstance(states, dict) or "zero_stage" not in states or "partition_count" not in states:
        raise CheckpointError(f"{file}: not DeepSpeed ZeRO optimizer states (no optimizer_state_dict.zero_stage)")
    return states


def _flat_groups(file: Path, states: dict, key: str) -> list[torch.Tensor]:
    groups = states.get(key)
    if not isinstance(groups, list) or not all(isinstance(g, torch.Tensor) for g in groups):
        raise CheckpointError(f"{file}: optimizer_state_dict has no {key} list of tensors")
    return [g.detach().reshape(-1) for g in groups]


def _virtual_slice(file: Path, name: str, parts: list[torch.Tensor], start: int, length: int) -> torch.Tensor:
    """Elements [start, start + length) of the concatenation of `parts`, copying only those."""
    pieces, position = [], 0
    for part in parts:
        low, high = max(start, position), min(start + length, position + part.numel())
        if low < high:
            pieces.append(part[low - position: high - position])
        position += part.numel()
    if sum(p.numel() for p in pieces) != length:
        raise CheckpointError(f"{file}: tensor {name}: the flat fp32 groups end before its elements")
    return torch.cat(pieces) if pieces else torch.empty(0, dtype=torch.float32)


def _zero12_slices(file: Path, param_shapes: list[dict], flats: list[list[torch.Tensor]]) -> dict:
    """name -> (shape, read) for ZeRO-1/2: group g is the ranks' partitions of it back to back."""
    world = len(flats)
    if any(len(f) != len(param_shapes) for f in flats):
        raise CheckpointError(f"{file}: {len(flats[0])} fp32 groups for {len(param_shapes)} parameter groups")
    slices = {}
    for group, shapes in enumerate(param_shapes):
        parts = [flats[rank][group] for rank in range(world)]
        offset = 0
        for name, shape in shapes.items():
            numel = math.prod(shape)
            slices[name] = (tuple(shape), _reader(file, name, parts, offset, numel, shape))
            offset += numel
        available = sum(p.numel() for p in parts)
        align = 2 * world
        if align * math.ceil(offset / align) != align * math.ceil(available / align):
            raise CheckpointError(f"{file}: group {group}: parameters use {offset} elements of {available} "
                                  "in the fp32 partitions (not this checkpoint's param_shapes?)")
    return slices


def _zero3_slices(file: Path, param_shapes: list[dict], flats: list[list[torch.Tensor]]) -> dict:
    """name -> (shape, read) for ZeRO-3: each rank holds ceil(numel/W) elements of every parameter."""
    world = len(flats)
    slices, offset = {}, 0
    for name, shape in ((n, s) for shapes in param_shapes for n, s in shapes.items()):
        numel = math.prod(shape)
        part = math.ceil(numel / world)
        slices[name] = (tuple(shape), _zero3_reader(file, name, flats, offset, part, numel, shape))
        offset += part
    available = sum(g.numel() for g in flats[0])
    if offset != available:
        raise CheckpointError(f"{file}: parameters use {offset} elements per rank of {available} in fp32_flat_groups "
                              "(not this checkpoint's param_shapes?)")
    return slices


def _reader(file: Path, name: str, parts: list[torch.Tensor], offset: int, numel: int, shape):
    return lambda: _virtual_slice(file, name, parts, offset, numel).view(tuple(shape))


def _zero3_reader(file: Path, name: str, flats: list[list[torch.Tensor]], offset: int, part: int, numel: int, shape):
    def read() -> torch.Tensor:
        pieces = [_virtual_slice(file, name, groups, offset, part) for groups in flats]
        return torch.cat(pieces)[:numel].view(tuple(shape)).clone()
    return read


def _as_stored(model_files: list[Path], states: list[dict], module: dict[str, torch.Tensor], zero3: bool,
               masters: set[str]) -> dict[str, tuple[TensorInfo, object]]:
    """Buffers and frozen parameters (no fp32 master): ZeRO-3 frozen parameters from the ranks'
    fragments (each ceil(numel/W), padded), everything else from `module`."""
    file = model_files[0]
    kept: dict[str, tuple[TensorInfo, object]] = {}
    frozen = states[0].get("frozen_param_shapes") or {} if zero3 else {}
    for name, shape in frozen.items():
        fragments = [s["frozen_param_fragments"][name] for s in states]
        numel = math.prod(shape)
        if sum(f.numel() for f in fragments) < numel:
            raise CheckpointError(f"{file}: frozen tensor {name}: fragments hold fewer than {numel} elements")
        kept[name] = (TensorInfo(name, fragments[0].dtype, tuple(shape), file),
                      lambda fragments=fragments, numel=numel, shape=shape:
                      torch.cat([f.reshape(-1) for f in fragments])[:numel].view(tuple(shape)))
    for name, tensor in module.items():
        if name in masters or name in kept:
            continue
        if zero3 and tensor.numel() == 0:
            raise CheckpointError(f"{file}: tensor {name}: a ZeRO-3 placeholder with no fp32 master or fragment")
        kept[name] = (TensorInfo(name, tensor.dtype, tuple(tensor.shape), file),
                      lambda tensor=tensor: tensor.clone(memory_format=torch.contiguous_format))
    return kept
