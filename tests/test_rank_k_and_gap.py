"""Item 1 of issue 15: a default k relative to the matrix, cautions for clamped or large k, and the
spectral gap σ_k/σ_{k+1} of W0 with Wedin's flag beside every principal angle."""

import json

import pytest
import torch

from dynamics.cli import main
from dynamics.geometry import geometry_stats
from dynamics.geometry_options import default_rank_k
from tests.checkpoint_factory import write_safetensors


def _diagonal(values, m: int, n: int) -> torch.Tensor:
    w = torch.zeros(m, n, dtype=torch.float64)
    w[range(len(values)), range(len(values))] = torch.as_tensor(values, dtype=torch.float64)
    return w


@pytest.mark.parametrize("m, n, k", [(64, 64, 8), (64, 48, 6), (7, 300, 1), (3584, 18944, 64), (600, 513, 64)])
def test_default_k_is_an_eighth_of_the_smaller_side_capped_at_64(m, n, k):
    assert default_rank_k(m, n) == k


def test_default_k_is_used_per_matrix_and_not_called_clamped():
    w0 = torch.randn(48, 40, generator=torch.Generator().manual_seed(0))
    stats = geometry_stats(w0, w0 + 1e-2 * torch.randn(48, 40, generator=torch.Generator().manual_seed(1)))
    assert (stats.k, stats.k_clamped) == (5, False)
    assert geometry_stats(w0, w0, k=64).k_clamped


@pytest.mark.parametrize("exact", [True, False])
def test_gap_and_wedin_bound_on_a_hand_built_spectrum(exact):
    # σ(W0) = 10, 9, 5, 4.5, 1: at k = 2 the gap is 9/5 = 1.8 and δ = 4.
    w0 = _diagonal([10, 9, 5, 4.5, 1], 12, 10)
    small = torch.zeros(12, 10, dtype=torch.float64)
    small[0, 5] = 3.0  # ‖Δ‖₂ = 3 < δ: Wedin bounds sin θ by 3/4
    stats = geometry_stats(w0.float(), (w0 + small).float(), k=2, exact=exact)
    assert stats.spectral_gap == pytest.approx(1.8, rel=1e-5)
    assert stats.wedin_sin_bound == pytest.approx(0.75, rel=1e-4)
    assert not stats.gap_flagged
    large = small * 5 / 3  # ‖Δ‖₂ = 5 ≥ δ = 4: the bound excludes nothing
    stats = geometry_stats(w0.float(), (w0 + large).float(), k=2, exact=exact)
    assert stats.wedin_sin_bound == pytest.approx(1.25, rel=1e-4) and stats.gap_flagged


def test_no_gap_when_k_is_the_whole_space_or_delta_is_zero():
    w0 = torch.randn(6, 4, generator=torch.Generator().manual_seed(2))
    whole = geometry_stats(w0, w0 + 0.1, k=4, exact=True)
    assert whole.spectral_gap is None and not whole.gap_flagged
    same = geometry_stats(w0, w0, k=2, exact=True)
    assert same.wedin_sin_bound == 0.0 and not same.gap_flagged


@pytest.mark.parametrize("seed", range(3))
def test_gap_matches_a_float64_svd(seed):
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(80, 50, generator=g, dtype=torch.float64) * torch.linspace(3, 0.1, 50, dtype=torch.float64)
    delta = 1e-2 * torch.randn(80, 50, generator=g, dtype=torch.float64)
    s = torch.linalg.svdvals(w0)
    for exact in (True, False):
        stats = geometry_stats(w0.float(), (w0 + delta).float(), k=6, exact=exact)
        assert stats.spectral_gap == pytest.approx((s[5] / s[6]).item(), rel=2e-3)
        reference = torch.linalg.matrix_norm(delta.float().double(), ord=2) / (s[5] - s[6])
        assert stats.wedin_sin_bound == pytest.approx(reference.item(), rel=2e-2)


def _flat_pair(tmp_path):
    g = torch.Generator().manual_seed(4)
    base = {"model.layers.0.self_attn.q_proj.weight": torch.randn(16, 16, generator=g),
            "model.layers.0.mlp.up_proj.weight": torch.randn(64, 16, generator=g)}
    tuned = {k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    return write_safetensors(tmp_path / "a", base), write_safetensors(tmp_path / "b", tuned)


def test_clamped_and_large_k_are_cautioned_at_the_top_of_the_summary(tmp_path, capsys):
    a, b = _flat_pair(tmp_path)
    assert main(["diff", str(a), str(b), "--device", "cpu", "-q", "--geometry", "--rank-k", "32",
                 "--json", str(tmp_path / "d.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    cautions = [i for i, line in enumerate(lines) if line.startswith("CAUTION:")]
    first_number = next(i for i, line in enumerate(lines) if line.startswith("bitwise sparsity"))
    assert cautions and max(cautions) < first_number
    text = "\n".join(lines[i] for i in cautions)
    assert "--rank-k exceeds min(m, n) on 2 matrices" in text
    assert "k²/(m·n) up to 100.0%" in text
    rows = {r["name"]: r["geometry"] for r in json.loads((tmp_path / "d.json").read_text())["tensors"]}
    assert {g["k"] for g in rows.values()} == {16}


def test_default_k_gives_no_k_caution_and_the_gap_per_kind(tmp_path, capsys):
    a, b = _flat_pair(tmp_path)
    assert main(["diff", str(a), str(b), "--device", "cpu", "-q", "--geometry", "--json", str(tmp_path / "d.json")]) == 0
    out = capsys.readouterr().out
    assert "--rank-k exceeds" not in out and "top-k block holds" not in out
    assert "min σ_k/σ_k+1" in out
    rows = {r["name"]: r["geometry"] for r in json.loads((tmp_path / "d.json").read_text())["tensors"]}
    assert rows["model.layers.0.self_attn.q_proj.weight"]["k"] == 2
    assert all(g["spectral_gap"] > 1 and "gap_flagged" in g for g in rows.values())
    # A 0.3-σ noise update on a random (flat-spectrum) matrix: every gap is below ‖Δ‖₂, all flagged.
    assert all(g["gap_flagged"] for g in rows.values())
    assert "CAUTION: 2 of 2 matrices have a spectral gap" in out


def test_reports_put_the_cautions_beside_their_first_readings(tmp_path):
    from dynamics import diff
    from dynamics.geometry_options import GeometryOptions
    from reports.three_gate import render_three_gate_report

    a, b = _flat_pair(tmp_path)
    result = diff(a, b, device="cpu", geometry=GeometryOptions(k=32))
    render_three_gate_report(result, tmp_path / "r")
    markdown = (tmp_path / "r" / "three-gate.md").read_text()
    glance = markdown[: markdown.index("## Gate I")]
    assert "**Caution:** --rank-k exceeds min(m, n) on 2 matrices" in glance
    assert "Missing input" not in glance
