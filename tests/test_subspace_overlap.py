"""Subspace overlap of two updates: 1 for the same subspace, 0 for orthogonal ones, None for Δ = 0."""

from __future__ import annotations

import pytest
import torch

from dynamics.lora_extract import extract_lora
from dynamics.subspace_overlap import subspace_overlap, update_subspace_overlap
from tests.checkpoint_factory import write_safetensors

Q = "model.layers.0.self_attn.q_proj.weight"


def test_same_orthogonal_and_zero_updates():
    e = torch.eye(6, 4, dtype=torch.float64)
    same = subspace_overlap("w", e[:, :2] @ torch.randn(2, 4, dtype=torch.float64), e[:, :2] @ torch.randn(2, 4, dtype=torch.float64), 2)
    assert same.overlap_left == pytest.approx(1.0) and same.chance_left == pytest.approx(2 / 6)
    rows = torch.zeros(6, 4, dtype=torch.float64)
    rows[4:, :] = torch.randn(2, 4, dtype=torch.float64)
    orthogonal = subspace_overlap("w", e[:, :2] @ torch.randn(2, 4, dtype=torch.float64), rows, 2)
    assert orthogonal.overlap_left == pytest.approx(0.0, abs=1e-12)
    assert subspace_overlap("w", torch.zeros(6, 4), rows, 2).overlap_left is None


def test_an_extracted_lora_overlaps_the_full_update_it_came_from(tmp_path):
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(12, 8, generator=g)
    w1 = w0 + torch.randn(12, 3, generator=g) @ torch.randn(3, 8, generator=g) * 1e-2
    base = write_safetensors(tmp_path / "base", {Q: w0})
    full = write_safetensors(tmp_path / "full", {Q: w1})
    extract_lora(base, full, tmp_path / "lora", rank=3)
    (row,) = update_subspace_overlap(base, tmp_path / "lora", full, rank=3)
    assert row.rank == 3 and row.overlap_left == pytest.approx(1.0, abs=1e-4)
