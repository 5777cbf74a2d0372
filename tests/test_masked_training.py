"""apply_mask: masked-out weights stay bit-identical through AdamW with weight decay; removable."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dynamics.errors import MaskError
from dynamics.masked_training import apply_mask
from dynamics.selection import select


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 5) -> None:
    x, y = torch.randn(16, 6), torch.randn(16, 3)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()


@pytest.mark.parametrize("make", [
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.5),
    lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, weight_decay=0.1),
])
def test_masked_out_weights_stay_bit_identical_under_optimizers_with_weight_decay(make):
    model = _model()
    masks = select(model.state_dict(), "random", 0.3, include=["0.weight", "2.weight"], seed=1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with apply_mask(model, masks):
        _train(model, make([p for p in model.parameters() if p.requires_grad]))
    after = dict(model.named_parameters())
    for name, mask in masks.items():
        kept = ~mask
        assert torch.equal(after[name].detach()[kept].view(torch.int32), before[name][kept].view(torch.int32))
        assert (after[name].detach()[mask] != before[name][mask]).float().mean() > 0.9
    for name in ("0.bias", "2.bias"):  # frozen: no mask, freeze_others
        assert torch.equal(after[name].detach(), before[name])
        assert after[name].requires_grad  # given back on remove


def test_remove_lets_every_weight_train_again_and_bad_masks_name_the_tensor():
    model = _model()
    masks = {"0.weight": torch.zeros(8, 6, dtype=torch.bool)}
    handle = apply_mask(model, masks, freeze_others=False)
    handle.remove()
    before = model[0].weight.detach().clone()
    _train(model, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.5), steps=1)
    assert (model[0].weight.detach() != before).all()
    with pytest.raises(MaskError, match="0.weight"):
        apply_mask(model, {"0.weight": torch.ones(6, 8, dtype=torch.bool)})
    with pytest.raises(MaskError, match="nope.weight"):
        apply_mask(model, {"nope.weight": torch.ones(1, dtype=torch.bool)})


def test_an_optimizer_of_another_model_does_not_trigger_the_restore():
    model, other = _model(), _model()
    with apply_mask(model, {"0.weight": torch.zeros(8, 6, dtype=torch.bool)}, freeze_others=False) as handle:
        calls = []
        handle.restore = lambda: calls.append(1)
        _train(other, torch.optim.SGD(other.parameters(), lr=0.1), steps=2)
        assert not calls
        _train(model, torch.optim.SGD(model.parameters(), lr=0.1), steps=2)
        assert len(calls) == 2
