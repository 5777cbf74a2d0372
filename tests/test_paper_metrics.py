"""The papers' metrics against float64 references and hand-built cases."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from dynamics.cli import main
from dynamics.metrics import paper_metrics_of
from dynamics.paper_metrics import PaperOptions, angle_curve, pair_paper_counts, paper_metrics
from dynamics.selection import complement, intersection, select
from tests.checkpoint_factory import write_safetensors

Q = "model.layers.0.self_attn.q_proj.weight"
NORM = "model.layers.0.input_layernorm.weight"


def _pair(seed: int = 0, shape=(20, 12), scale: float = 0.05):
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(*shape, generator=g)
    return w0, w0 + scale * torch.randn(*shape, generator=g)


def test_nss_against_a_float64_reference():
    w0, w1 = _pair()
    counts, _, _ = pair_paper_counts(w0, w1)
    s0 = np.linalg.svd(w0.double().numpy(), compute_uv=False)
    s1 = np.linalg.svd(w1.double().numpy(), compute_uv=False)
    expected = np.linalg.norm(s1 - s0) / np.linalg.norm(s0)
    assert paper_metrics_of(counts)["normalized_spectrum_shift"] == pytest.approx(expected, rel=1e-9)


def test_angle_curve_against_scipy_subspace_angles():
    w0, w1 = _pair(scale=0.3)
    _, left, right = pair_paper_counts(w0, w1, PaperOptions(angle_k=8))
    u0, _, vt0 = np.linalg.svd(w0.double().numpy(), full_matrices=False)
    u1, _, vt1 = np.linalg.svd(w1.double().numpy(), full_matrices=False)
    for k in range(1, 9):
        assert left[k - 1] == pytest.approx(np.degrees(scipy.linalg.subspace_angles(u0[:, :k], u1[:, :k]).max()), abs=1e-6)
        assert right[k - 1] == pytest.approx(np.degrees(scipy.linalg.subspace_angles(vt0[:k].T, vt1[:k].T).max()), abs=1e-6)
    assert angle_curve(torch.eye(4)[:, :2], torch.eye(4)[:, [1, 0]]) == pytest.approx((90.0, 0.0), abs=1e-6)


def test_eta_rule_counts_signed_zeros_unchanged_and_small_relative_moves():
    a = torch.tensor([[0.0, 1.0], [2.0, 4.0]], dtype=torch.bfloat16)
    b = torch.tensor([[-0.0, 1.0], [2.015625, 4.0]], dtype=torch.bfloat16)  # ±0 flip; one ULP at 2
    c = pair_paper_counts(a, b)[0]
    assert (c.changed_bitwise, c.changed_eta, c.delta_zero) == (2, 1, 3)
    m = paper_metrics_of(c)
    assert m["eta_sparsity"] == 0.75 and m["eta_forgiven_share"] == 0.25
    a32 = torch.tensor([1.0, 1.0])
    c32 = pair_paper_counts(a32, torch.tensor([1.0005, 1.01]))[0]  # 5e-4 ≤ η·1.0005; 1e-2 > η·1.01
    assert c32.changed_eta == 1 and c32.changed_bitwise == 2


def test_update_rank_ratio_and_the_principal_not_low_overlap():
    g = torch.Generator().manual_seed(3)
    w0 = torch.randn(6, 5, generator=g)
    w1 = w0 + torch.randn(6, 2, generator=g) @ torch.randn(2, 5, generator=g)
    c = pair_paper_counts(w0, w1, PaperOptions(mask_k=2, principal_fraction=0.4, low_fraction=0.3))[0]
    assert paper_metrics_of(c)["update_rank_ratio"] == pytest.approx(2 / 5)
    mask = intersection(select({Q: w0}, "principal", 0.4, k=2, exact=True),
                        complement(select({Q: w0}, "low_magnitude", 0.3)))[Q]
    update = w0 != w1
    assert (c.mask_size, c.updated, c.updated_in_mask) == (int(mask.sum()), int(update.sum()), int((mask & update).sum()))


def test_layer_sparsity_unweighted_beside_element_weighted_and_cli(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    q0 = torch.randn(4, 4, generator=g).to(torch.bfloat16)
    q1 = q0.clone()
    q1.view(-1)[:8] = q1.view(-1)[:8] * 2  # half of Q changes
    norm = torch.ones(2, dtype=torch.bfloat16)  # the norm does not
    base = write_safetensors(tmp_path / "a", {Q: q0, NORM: norm})
    tuned = write_safetensors(tmp_path / "b", {Q: q1, NORM: norm})
    result = paper_metrics(base, tuned, PaperOptions(angle_k=4, mask_k=2))
    assert result.subnetworks_layer_sparsity() == {0: pytest.approx(0.75)}  # (0.5 + 1.0) / 2
    assert result.to_json()["by_layer"]["0"]["subnetworks_sparsity"] == pytest.approx(10 / 18)
    assert main(["paper-metrics", str(base), str(tuned), "--angle-k", "4", "--paper-compat",
                 "--json", str(tmp_path / "p.json")]) == 0
    assert "unweighted mean of tensors: 0.7500" in capsys.readouterr().out
