"""Adam's optimizer state beside a checkpoint, read per tensor: the first moment m (`exp_avg`), the second
moment v (`exp_avg_sq`) and the hyper-parameters of the group each parameter is in.

Layouts read (none importing its framework, `torch.load(weights_only=True)`, memory-mapped):
- HF Trainer / TRL `optimizer.pt`: `torch.optim.AdamW.state_dict()`, `state` = parameter index ->
  {step, exp_avg, exp_avg_sq}, `param_groups` = [{lr, betas, eps, weight_decay, params: [indices]}]. The
  file holds no names: indices number the parameters of the groups back to back, so the caller passes
  each group's names in order (`probes.parameter_order.trainer_parameter_groups` rebuilds HF Trainer's
  groups from config.json); every moment's shape is checked against the one given for its name.
- DeepSpeed ZeRO-1/2/3 optim states (a tag folder, or one whose `latest` names it): names and order from
  the model states' `param_shapes`, the flat moments cut like the fp32 masters (`deepspeed_zero`).
- verl FSDP `optim_world_size_W_rank_R.pt` (a component folder, or a `global_step_N` whose actor it
  takes): DTensor moments by index, named by the model shard's saved order (`verl_fsdp.open_verl_moments`).
The `lr` stored in a group is the one the scheduler set after the last step: the next step's rate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from dynamics.checkpoints import deepspeed_zero, verl_fsdp
from dynamics.checkpoints.names import without_wrappers
from dynamics.checkpoints.torch_files import load_weights_only
from dynamics.errors import CheckpointError

HF_OPTIMIZER = "optimizer.pt"
StateKind = Literal["hf", "deepspeed", "verl"]


@dataclass(frozen=True)
class AdamHyper:
    """One parameter's Adam settings: learning rate, β1, β2, ε, decoupled weight decay, steps taken."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    step: int


@dataclass
class AdamState:
    """name -> Adam moments, read one tensor at a time (`moments(name)` -> (m, v), float32, CPU)."""

    path: Path
    format: str
    shapes: dict[str, tuple[int, ...]]
    hyper: dict[str, AdamHyper]
    reader: Callable[[str], tuple[torch.Tensor, torch.Tensor]]
    notes: list[str] = field(default_factory=list)

    def moments(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in self.shapes:
            raise CheckpointError(f"{self.path}: no optimizer state for tensor {name}")
        m, v = self.reader(name)
        return m.float().contiguous(), v.float().contiguous()


def find_adam_state(folder: str | Path) -> tuple[StateKind, Path] | None:
    """The optimizer state a checkpoint folder carries: `optimizer.pt` (HF Trainer / TRL), verl's
    optim rank files (the folder, or its `actor/`), or a DeepSpeed tag folder with optim-states files
    (the folder itself, the tag its `latest` names, or a `global_step*` subfolder); None without one."""
    folder = Path(folder)
    if folder.is_file():
        return ("hf", folder) if folder.name.endswith((".pt", ".pth", ".bin")) else None
    if (folder / HF_OPTIMIZER).is_file():
        return "hf", folder / HF_OPTIMIZER
    for candidate in (folder, folder / verl_fsdp.DEFAULT_COMPONENT):
        if candidate.is_dir() and verl_fsdp.optim_files(candidate) is not None:
            return "verl", candidate
    candidates = [folder, deepspeed_zero.latest_tag(folder), *sorted(folder.glob("global_step*"))]
    for candidate in candidates:
        if candidate is not None and candidate.is_dir() and any(
                deepspeed_zero.OPTIM_STATES.match(f.name) for f in candidate.iterdir()):
            return "deepspeed", candidate
    return None


def open_adam_state(path: str | Path, parameter_groups: Sequence[Sequence[str]] | None = None,
                    shapes: dict[str, tuple[int, ...]] | None = None) -> AdamState:
    """Open the Adam state at `path` (a file or a checkpoint folder, see `find_adam_state`).

    Args:
        parameter_groups: for `optimizer.pt`, the names of each param group's parameters in order.
        shapes: name -> weight shape; each moment must have its weight's shape (a wrong order shows here).

    Raises:
        CheckpointError: no state found, not Adam, names missing, or a shape that does not match.
    """
    found = find_adam_state(path)
    if found is None:
        raise CheckpointError(f"{path}: no optimizer state ({HF_OPTIMIZER} or DeepSpeed optim_states files)")
    kind, where = found
    if kind == "deepspeed":
        state = _open_deepspeed(where)
    elif kind == "verl":
        state = _open_verl(where)
    else:
        if parameter_groups is None:
            raise CheckpointError(f"{where}: stores parameters by index, not name: pass the parameter groups' names")
        state = _open_hf(where, parameter_groups)
    for name, shape in (shapes or {}).items():
        if name in state.shapes and state.shapes[name] != tuple(shape):
            raise CheckpointError(f"{where}: tensor {name}: moments of shape {list(state.shapes[name])}, "
                                  f"the weight is {list(shape)} (parameter order wrong?)")
    return state


def _hyper(settings: dict, step: object) -> AdamHyper:
    beta1, beta2 = settings.get("betas", (0.9, 0.999))
    return AdamHyper(float(settings["lr"]), float(beta1), float(beta2), float(settings.get("eps", 1e-8)),
                     float(settings.get("weight_decay", 0.0)), int(step))


def _open_hf(file: Path, parameter_groups: Sequence[Sequence[str]]) -> AdamState:
    obj = load_weights_only(file)
    if not isinstance(obj, dict) or not {"state", "param_groups"} <= obj.keys():
        raise CheckpointError(f"{file}: not an optimizer state dict (no state / param_groups)")
    groups = obj["param_groups"]
    sizes = [len(g["params"]) for g in groups]
    if sizes != [len(names) for names in parameter_groups]:
        raise CheckpointError(f"{file}: param groups of {sizes} parameters, the names given are "
                              f"{[len(names) for names in parameter_groups]}")
    index_of: dict[str, int] = {}
    hyper: dict[str, AdamHyper] = {}
    for settings, names in zip(groups, parameter_groups):
        for index, name in zip(settings["params"], names):
            entry = obj["state"].get(index)
            if entry is None:  # no gradient ever reached it: no state
                continue
            if not {"exp_avg", "exp_avg_sq"} <= entry.keys():
                raise CheckpointError(f"{file}: parameter {index} ({name}) has no exp_avg / exp_avg_sq (not Adam)")
            index_of[without_wrappers(name)] = index
            hyper[without_wrappers(name)] = _hyper(settings, entry.get("step", 0))
    state = obj["state"]

    def read(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        entry = state[index_of[name]]
        return entry["exp_avg"].clone(), entry["exp_avg_sq"].clone()

    shapes = {name: tuple(state[i]["exp_avg"].shape) for name, i in index_of.items()}
    notes = [(f"optimizer.pt: {len(index_of)} parameters by index in {len(groups)} param groups, named in the "
              "order given (HF Trainer: named_parameters() split into decay / no-decay groups)")]
    return AdamState(file, f"torch AdamW state dict {file}", shapes, hyper, read, notes)


def _open_deepspeed(folder: Path) -> AdamState:
    moments, settings = deepspeed_zero.open_deepspeed_moments(folder)
    hyper = {without_wrappers(n): _hyper(s, s["step"]) for n, s in settings.items()}
    readers = {without_wrappers(n): read for n, (_, read) in moments.items()}
    shapes = {without_wrappers(n): tuple(shape) for n, (shape, _) in moments.items()}
    notes = [f"DeepSpeed optim states in {folder}: {len(shapes)} parameters named by param_shapes"]
    return AdamState(folder, f"DeepSpeed ZeRO moments {folder}", shapes, hyper, lambda n: readers[n](), notes)


def _open_verl(folder: Path) -> AdamState:
    exp_avg, exp_avg_sq, settings, step = verl_fsdp.open_verl_moments(folder)
    hyper = _hyper(settings, step)
    shapes = {without_wrappers(n): info.shape for n, info in exp_avg.tensors.items()}
    stored = {without_wrappers(n): n for n in exp_avg.tensors}
    notes = [f"verl FSDP optim shards in {folder}: {len(shapes)} parameters named by the model shard's order"]
    return AdamState(folder, f"verl FSDP moments {folder}", shapes, dict.fromkeys(shapes, hyper),
                     lambda n: (exp_avg.read(stored[n]), exp_avg_sq.read(stored[n])), notes)
