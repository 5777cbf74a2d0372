"""`apply_mask`: train only the selected elements of a model's weights, under any torch optimizer.

Two mechanisms, because one is not enough:
1. a gradient hook on every masked parameter zeroes the gradient outside the mask (before it is
   accumulated into `.grad`), so gradient clipping, momentum and Adam's moments see only the selected
   elements;
2. a global optimizer step post-hook (`torch.optim.optimizer.register_optimizer_step_post_hook`) puts the
   masked-out elements back to their saved values after every `step()` of any optimizer that holds one
   of the parameters. That undoes what zero gradients cannot stop: AdamW's decoupled weight decay
   (W ← W − lr·λ·W), momentum left from earlier steps, and optimizers that move weights on their own.
The restore copies saved values, so masked-out elements stay bit-identical. It runs inside whatever
calls `optimizer.step()` (a plain loop, HF Trainer / TRL through accelerate's wrapped optimizer).
Parameters without a mask are frozen (`requires_grad=False`) unless `freeze_others=False`.
Memory: one bool mask per masked parameter plus a copy of its masked-out values.
Not for sharded parameters (FSDP, DeepSpeed ZeRO-3): masks are applied to whole local tensors.

Example:
    >>> masks = select(model.state_dict(), "low_magnitude", 0.05)   # doctest: +SKIP
    >>> with apply_mask(model, masks):                              # doctest: +SKIP
    ...     train(model, torch.optim.AdamW(model.parameters(), weight_decay=0.1))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Self

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from dynamics.errors import MaskError


class MaskedTraining:
    """The hooks `apply_mask` installed; `remove()` (or leaving the `with` block) takes them all off."""

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor], freeze_others: bool):
        params = dict(model.named_parameters())
        self._entries: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]] = []
        self._hooks = []
        self._requires_grad = {name: p.requires_grad for name, p in params.items()}
        for name, mask in masks.items():
            param = params.get(name)
            if param is None:
                raise MaskError(f"tensor {name}: the model has no parameter of that name")
            if tuple(mask.shape) != tuple(param.shape):
                raise MaskError(f"tensor {name}: mask of shape {list(mask.shape)} does not fit {list(param.shape)}")
            selected = mask.to(device=param.device, dtype=torch.bool)
            keep = ~selected
            self._entries.append((param, keep, param.detach()[keep].clone()))
            self._hooks.append(param.register_hook(lambda grad, keep=keep: grad.masked_fill(keep, 0)))
        if freeze_others:
            for name, p in params.items():
                if name not in masks:
                    p.requires_grad_(False)
        self._params = {id(p) for p, _, _ in self._entries}
        self._model_params = params
        self._hooks.append(register_optimizer_step_post_hook(self._after_step))

    def _after_step(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        if any(id(p) in self._params for group in optimizer.param_groups for p in group["params"]):
            self.restore()

    @torch.no_grad()
    def restore(self) -> None:
        """Put every masked-out element back to its saved value (after each optimizer step, automatically)."""
        for param, keep, frozen in self._entries:
            param[keep] = frozen

    def remove(self) -> None:
        """Remove the gradient hooks and the step hook; give frozen parameters their `requires_grad` back."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for name, p in self._model_params.items():
            p.requires_grad_(self._requires_grad[name])

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def apply_mask(model: nn.Module, masks: Mapping[str, torch.Tensor], *, freeze_others: bool = True) -> MaskedTraining:
    """Let training change only the True elements of `masks` (parameter name → bool tensor of its shape;
    names as in `model.named_parameters()`, which are the checkpoint names of a HF model). See the module
    docstring for how; returns the handle whose `remove()` undoes it. A name the model lacks or a mask of
    the wrong shape is a MaskError naming the tensor."""
    return MaskedTraining(model, masks, freeze_others)
