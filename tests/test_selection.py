"""Weight selection: exact budgets, deterministic ties, the paper's masks against a float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dynamics import diff
from dynamics.errors import MaskError
from dynamics.selection import (
    budget_count,
    complement,
    density,
    from_diff,
    intersection,
    random_like,
    select,
    top_count,
    union,
)
from tests.checkpoint_factory import write_safetensors

Q = "model.layers.0.self_attn.q_proj.weight"
UP = "model.layers.0.mlp.up_proj.weight"


def test_budget_rounds_half_up_and_is_exact():
    assert [budget_count(0.5, n) for n in (4, 5, 7)] == [2, 3, 4]
    assert budget_count(0.0, 9) == 0 and budget_count(1.0, 9) == 9
    with pytest.raises(MaskError):
        budget_count(1.5, 9)


def test_ties_at_the_threshold_go_to_lower_positions():
    scores = torch.ones(3, 4)
    assert top_count(scores, 5).view(-1).tolist() == [True] * 5 + [False] * 7
    scores = torch.tensor([[0.1, 0.5, 0.1], [2.0, 0.1, 3.0]])
    assert top_count(scores, 2, largest=False).view(-1).tolist() == [True, False, True, False, False, False]
    assert top_count(scores, 3, largest=True).view(-1).tolist() == [False, True, False, True, False, True]


def test_low_magnitude_selects_the_smallest_magnitudes_exactly():
    w = {Q: torch.tensor([[0.1, -0.5, -0.1], [2.0, 0.1, -3.0]])}
    mask = select(w, "low_magnitude", 1 / 3)[Q]
    assert mask.view(-1).tolist() == [True, False, True, False, False, False]  # |−0.1| ties 0.1; lower index wins
    assert select(w, "low_magnitude", 0.5)[Q].sum() == 3


def test_principal_matches_a_float64_rank_k_reconstruction():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(24, 16, generator=g)
    u, s, vh = np.linalg.svd(w.double().numpy(), full_matrices=False)
    reference = np.abs((u[:, :4] * s[:4]) @ vh[:4])
    count = budget_count(0.25, w.numel())
    expected = np.zeros(w.numel(), dtype=bool)
    expected[np.argsort(-reference.reshape(-1), kind="stable")[:count]] = True
    for exact in (True, False):
        mask = select({Q: w}, "principal", 0.25, k=4, exact=exact)[Q]
        assert int(mask.sum()) == count
        assert (mask.view(-1).numpy() == expected).mean() > 0.99  # randomized SVD: near-ties may swap
    assert np.array_equal(select({Q: w}, "principal", 0.25, k=4, exact=True)[Q].view(-1).numpy(), expected)


def test_global_budget_and_default_include_from_a_checkpoint(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {Q: torch.randn(8, 4, generator=g), UP: 10 * torch.randn(6, 4, generator=g),
               "model.layers.0.input_layernorm.weight": torch.ones(4), "model.embed_tokens.weight": torch.ones(5, 4)}
    base = write_safetensors(tmp_path / "base", tensors)
    per_tensor = select(base, "low_magnitude", 0.3)
    assert set(per_tensor) == {Q, UP}
    assert {n: int(m.sum()) for n, m in per_tensor.items()} == {Q: budget_count(0.3, 32), UP: budget_count(0.3, 24)}
    pooled = select(base, "low_magnitude", 0.3, per_tensor=False)
    assert sum(int(m.sum()) for m in pooled.values()) == budget_count(0.3, 56)
    assert pooled[Q].sum() > pooled[UP].sum()  # UP's weights are 10× larger: fewer are "low"


def test_random_masks_are_exact_deterministic_and_density_matched():
    w = {Q: torch.zeros(10, 10), UP: torch.zeros(5, 7)}
    a, b = select(w, "random", 0.37, seed=3), select(w, "random", 0.37, seed=3)
    assert all(a[n].equal(b[n]) and int(a[n].sum()) == budget_count(0.37, a[n].numel()) for n in a)
    assert not a[Q].equal(select(w, "random", 0.37, seed=4)[Q])
    low = select({Q: torch.randn(10, 10), UP: torch.randn(5, 7)}, "low_magnitude", 0.2)
    matched = random_like(low, seed=1)
    assert {n: int(m.sum()) for n, m in matched.items()} == {n: int(m.sum()) for n, m in low.items()}


def test_complement_union_intersection_and_density():
    a = {Q: torch.tensor([True, True, False, False])}
    b = {Q: torch.tensor([True, False, True, False])}
    assert complement(a)[Q].tolist() == [False, False, True, True]
    assert union(complement(a), b)[Q].tolist() == [True, False, True, True]
    assert intersection(a, complement(b))[Q].tolist() == [False, True, False, False]
    assert density(union(a, b)) == {Q: 0.75, "all": 0.75}
    with pytest.raises(MaskError, match=UP):
        union(a, {UP: torch.ones(4, dtype=torch.bool)})


def test_from_diff_and_errors_name_the_tensor(tmp_path):
    w = torch.randn(4, 4)
    tuned = w.clone()
    tuned[0, 0] += 1
    base = write_safetensors(tmp_path / "a", {Q: w})
    run = write_safetensors(tmp_path / "b", {Q: tuned})
    masks = from_diff(diff(base, run, device="cpu", save_masks=True))
    assert masks[Q].nonzero().tolist() == [[0, 0]]
    with pytest.raises(MaskError, match="save_masks"):
        from_diff(diff(base, run, device="cpu"))
    with pytest.raises(MaskError, match="model.norm.weight"):
        select({"model.norm.weight": torch.ones(4)}, "principal", 0.5, include=["model.norm.weight"])
    with pytest.raises(MaskError, match="rule"):
        select({Q: w}, "largest", 0.5)


def test_within_ranks_only_the_candidates_and_keeps_the_whole_tensor_budget():
    w = {Q: torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]])}
    allowed = {Q: torch.tensor([[False, True, False, True], [True, True, True, True]])}
    mask = select(w, "low_magnitude", 0.25, within=allowed)[Q]  # 2 of 8, smallest among the allowed
    assert mask.view(-1).nonzero().view(-1).tolist() == [1, 3]
    assert select(w, "random", 0.5, within=allowed)[Q].logical_and(~allowed[Q]).sum() == 0
    with pytest.raises(MaskError, match="exceeds"):
        select(w, "low_magnitude", 0.9, within=allowed)
