import math

import numpy as np
import pytest
import torch

from dynamics import geometry
from dynamics.geometry import (
    GEOMETRY_MASK_PERCENTS,
    RANK_ENERGY_RANKS,
    geometry_stats,
    geometry_stats_batched,
    skip_reason,
)
from dynamics.svd import randomized_singular_values, randomized_svd


def _orthonormal(rows: int, cols: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def _matrix_with_spectrum(singular_values, m: int, n: int, seed: int = 0):
    """W = U diag(s) Vᵀ (float64) with random orthonormal U (m × m) and V (n × n); returns W, U, s, V."""
    s = torch.as_tensor(singular_values, dtype=torch.float64)
    u, v = _orthonormal(m, m, seed), _orthonormal(n, n, seed + 1)
    return (u[:, : len(s)] * s) @ v[:, : len(s)].T, u, s, v


def _power_law(m: int, n: int, alpha: float, noise: float, seed: int) -> torch.Tensor:
    w, *_ = _matrix_with_spectrum(torch.arange(1, min(m, n) + 1) ** -alpha, m, n, seed)
    g = torch.Generator().manual_seed(seed + 2)
    return (w + noise / math.sqrt(max(m, n)) * torch.randn(m, n, generator=g, dtype=torch.float64)).float()


# --------------------------------------------------------------------------- hand-built cases


@pytest.mark.parametrize("exact", [True, False])
def test_update_along_top_singular_pair_is_all_principal_and_rank_one(exact):
    s = [10.0 * 0.8**i for i in range(48)]
    w0, u, _, v = _matrix_with_spectrum(s, 64, 48)
    w1 = w0 + 0.5 * torch.outer(u[:, 0], v[:, 0])
    g = geometry_stats(w0.float(), w1.float(), k=8, exact=exact)
    assert g.principal_energy == pytest.approx(1.0, abs=1e-5)
    assert g.principal_energy_left == pytest.approx(1.0, abs=1e-5)
    assert g.principal_energy_right == pytest.approx(1.0, abs=1e-5)
    assert g.rank_energy["1"] == pytest.approx(1.0, abs=1e-5)
    assert g.update_stable_rank == pytest.approx(1.0, abs=1e-4)
    assert g.update_effective_rank == pytest.approx(1.0, abs=1e-3)
    # σ_1 grows from 10 to 10.5, the others stay: drift 0.05 at i = 1, 0 elsewhere.
    assert g.spectrum_drift_max == pytest.approx(0.05, abs=1e-5)
    assert g.spectrum_drift_mean == pytest.approx(0.05 / 8, abs=1e-5)
    assert g.principal_angle_max_deg == pytest.approx(0.0, abs=0.01)
    assert g.principal_energy_baseline == 64 / (64 * 48)


@pytest.mark.parametrize("exact", [True, False])
def test_update_orthogonal_to_top_block_has_zero_principal_energy(exact):
    s = [10.0 * 0.8**i for i in range(48)]
    w0, u, _, v = _matrix_with_spectrum(s, 64, 48)
    x = torch.randn(64 - 8, 48 - 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    delta = u[:, 8:] @ x @ v[:, 8:].T * 1e-3
    g = geometry_stats(w0.float(), (w0 + delta).float(), k=8, exact=exact)
    assert g.principal_energy == pytest.approx(0.0, abs=1e-6)
    # U0_8ᵀ Δ = 0 and Δ V0_8 = 0 as well: the update avoids the top-8 rows and columns of the block.
    assert g.principal_energy_left == pytest.approx(0.0, abs=1e-6)
    assert g.principal_energy_right == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("exact", [True, False])
def test_rotation_of_top_direction_gives_known_left_angle(exact):
    s = [10.0 * 0.8**i for i in range(48)]
    w0, u, _, _ = _matrix_with_spectrum(s, 64, 48)
    theta = math.radians(3.0)
    u1, outside = u[:, 0], u[:, 60]  # u[:, 48:] span the left null space of W0
    rotation = torch.eye(64, dtype=torch.float64) + math.sin(theta) * (
        torch.outer(outside, u1) - torch.outer(u1, outside)
    ) + (math.cos(theta) - 1) * (torch.outer(u1, u1) + torch.outer(outside, outside))
    g = geometry_stats(w0.float(), (rotation @ w0).float(), k=8, exact=exact)
    assert g.principal_angle_max_deg == pytest.approx(3.0, abs=1e-3)
    assert g.principal_angle_mean_sin2 == pytest.approx(math.sin(theta) ** 2 / 8, rel=1e-3)
    assert g.principal_angle_max_deg_right == pytest.approx(0.0, abs=0.01)  # R W0 keeps W0's right vectors
    assert g.spectrum_drift_max == pytest.approx(0.0, abs=1e-5)


def test_diagonal_w0_principal_and_low_magnitude_masks():
    # W0 = diag(20, 19, …, 1) in a 20 × 20 matrix: 400 elements, 380 exact zeros. The rank-4
    # reconstruction keeps 20, 19, 18, 17 on the diagonal, so the top-1% mask (4 elements) is
    # exactly those. The bottom-1% of |W0| is 4 of the 380 zeros: ties split evenly, 4/380 each.
    w0 = torch.diag(torch.arange(20, 0, -1, dtype=torch.float32))
    update = torch.zeros(20, 20, dtype=torch.bool)
    for i, j in [(0, 0), (3, 3), (5, 5), (0, 1)]:
        update[i, j] = True
    w1 = w0 + update * 0.25
    g = geometry_stats(w0, w1, k=4, exact=True)
    assert g.principal_mask_overlap["1"] == pytest.approx(2 / 4)  # (0,0) and (3,3)
    # top-5% = those 4 + 16 of the 396 exact zeros of the reconstruction, where (5,5) and (0,1) lie
    assert g.principal_mask_overlap["5"] == pytest.approx((2 + 2 * 16 / 396) / 4)
    assert g.low_magnitude_mask_overlap["1"] == pytest.approx((4 / 380) / 4)  # only (0,1) is a zero
    # bottom-5% = 20 of the zeros: (0,1) counts 20/380
    assert g.low_magnitude_mask_overlap["5"] == pytest.approx((20 / 380) / 4)
    # bottom-10% = 40 elements: all 380 zeros tie, so still a share 40/380
    assert g.low_magnitude_mask_overlap["10"] == pytest.approx((40 / 380) / 4)
    assert g == geometry_stats(w0, w1, update_mask=update, k=4, exact=True)


def test_mask_overlap_is_chance_level_for_a_random_update():
    g = torch.Generator().manual_seed(3)
    w0 = torch.randn(200, 100, generator=g)
    update = torch.rand(200, 100, generator=g) < 0.5
    stats = geometry_stats(w0, w0 + update * 0.01, k=8)
    for p in GEOMETRY_MASK_PERCENTS:
        assert stats.principal_mask_overlap[str(p)] == pytest.approx(p / 100, abs=0.02)
        assert stats.low_magnitude_mask_overlap[str(p)] == pytest.approx(p / 100, abs=0.02)


def test_zero_update_gives_none_ratios_and_zero_angles():
    w0 = _power_law(64, 48, 1.0, 0.01, 0)
    g = geometry_stats(w0, w0.clone(), k=8)
    assert g.principal_angle_max_deg == 0.0 and g.principal_angle_mean_sin2 == 0.0
    assert g.principal_angle_max_deg_right == 0.0 and g.principal_angle_mean_sin2_right == 0.0
    assert g.spectrum_drift_max == 0.0
    for name in ("principal_energy", "principal_energy_left", "principal_energy_right",
                 "update_stable_rank", "update_effective_rank"):
        assert getattr(g, name) is None, name
    assert set(g.rank_energy.values()) == {None}
    assert set(g.principal_mask_overlap.values()) == {None}
    assert set(g.low_magnitude_mask_overlap.values()) == {None}
    assert g.stable_rank_a == g.stable_rank_b


def test_signed_zero_flip_is_an_update_without_delta():
    w0 = _power_law(16, 8, 1.0, 0.01, 0)
    w0[0, 0] = 0.0
    w1 = w0.clone()
    w1[0, 0] = -0.0
    g = geometry_stats(w0, w1, k=4, exact=True)
    assert g.principal_energy is None  # Δ = 0
    assert g.low_magnitude_mask_overlap["1"] == 1.0  # the one changed element is the smallest |W0|


def test_rank_deficient_w0_uses_its_nonzero_directions():
    w0, u, _, v = _matrix_with_spectrum([5.0, 3.0, 2.0], 64, 48)
    delta = 1e-2 * torch.outer(u[:, 1], v[:, 2])  # inside the rank-3 block
    for exact in (True, False):
        g = geometry_stats(w0.float(), (w0 + delta).float(), k=8, exact=exact)
        assert g.rank_a == 3 and g.rank_b == 3 and g.k == 8
        assert g.principal_energy == pytest.approx(1.0, abs=1e-5)
        assert g.principal_energy_baseline == 9 / (64 * 48)
        assert g.spectrum_drift_max < 1e-2
        assert g.principal_angle_max_deg is not None and g.principal_angle_max_deg < 1.0
        assert all(x is not None and math.isfinite(x) for x in g.principal_mask_overlap.values())


def test_zero_w0_has_no_subspace():
    w1 = torch.zeros(16, 8)
    w1[2, 3] = 1.0
    g = geometry_stats(torch.zeros(16, 8), w1, k=4)
    assert g.rank_a == 0 and g.rank_b == 1
    assert g.principal_angle_max_deg is None and g.spectrum_drift_mean is None and g.stable_rank_a is None
    assert g.principal_energy is None and g.principal_mask_overlap["5"] is None
    assert g.update_stable_rank == pytest.approx(1.0) and g.rank_energy["1"] == pytest.approx(1.0)


def test_k_larger_than_min_dimension_is_clamped():
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(10, 6, generator=g)
    w1 = w0 + 0.1 * torch.randn(10, 6, generator=g)
    stats = geometry_stats(w0, w1, k=64)
    assert stats.k == 6 and stats.k_clamped
    assert len(stats.singular_values_a) == 6
    assert stats.principal_energy_right == pytest.approx(1.0, abs=1e-5)  # V0_6 spans all of R^6
    assert stats.principal_energy == pytest.approx(stats.principal_energy_left, abs=1e-5)
    assert stats.principal_energy_baseline == 36 / 60
    assert stats.rank_energy["4"] < stats.rank_energy["16"] == pytest.approx(1.0, abs=1e-5)
    assert not geometry_stats(w0, w1, k=6).k_clamped


def test_skip_reason():
    assert skip_reason((3584,), torch.bfloat16) == "not 2-D"
    assert skip_reason((4, 4, 4), torch.float32) == "not 2-D"
    assert skip_reason((1, 3584), torch.float32) == "smaller than 2×2"
    assert skip_reason((8, 8), torch.int64) == "dtype int64"
    assert skip_reason((8, 8), torch.float16) is None


def test_nonfinite_weights_raise():
    w0 = torch.randn(8, 8)
    w1 = w0.clone()
    w1[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        geometry_stats(w0, w1)


# --------------------------------------------------------------------------- float64 reference


def _reference_overlap(values: np.ndarray, update: np.ndarray, percent: int, largest: bool) -> float:
    v, u = values.ravel(), update.ravel()
    size = percent * v.size / 100
    ordered = np.sort(v)[::-1] if largest else np.sort(v)
    threshold = ordered[math.ceil(size) - 1]
    beyond = v > threshold if largest else v < threshold
    equal = v == threshold
    return ((beyond & u).sum() + (equal & u).sum() * (size - beyond.sum()) / equal.sum()) / u.sum()


def _reference(w0: np.ndarray, w1: np.ndarray, update: np.ndarray, k: int) -> dict:
    """Every metric in float64 NumPy with full SVDs (matrices of full rank)."""
    delta = w1 - w0
    u0, s0, v0t = np.linalg.svd(w0, full_matrices=False)
    u1, s1, v1t = np.linalg.svd(w1, full_matrices=False)
    sd = np.linalg.svd(delta, compute_uv=False)
    u0k, v0k, u1k, v1k = u0[:, :k], v0t[:k].T, u1[:, :k], v1t[:k].T
    nd = (delta**2).sum()

    def angles(x, y):
        c = np.clip(np.linalg.svd(x.T @ y, compute_uv=False), 0, 1)
        return math.degrees(math.acos(c.min())), 1 - (c**2).sum() / k

    drift = np.abs(s1[:k] - s0[:k]) / s0[:k]
    recon = np.abs((u0k * s0[:k]) @ v0k.T)
    p = sd / sd.sum()
    return {
        "principal_angle": angles(u0k, u1k),
        "principal_angle_right": angles(v0k, v1k),
        "spectrum_drift_mean": drift.mean(),
        "spectrum_drift_max": drift.max(),
        "stable_rank_a": (w0**2).sum() / s0[0] ** 2,
        "stable_rank_b": (w1**2).sum() / s1[0] ** 2,
        "principal_energy": ((u0k.T @ delta @ v0k) ** 2).sum() / nd,
        "principal_energy_left": ((u0k.T @ delta) ** 2).sum() / nd,
        "principal_energy_right": ((delta @ v0k) ** 2).sum() / nd,
        "principal_mask_overlap": {str(q): _reference_overlap(recon, update, q, True) for q in GEOMETRY_MASK_PERCENTS},
        "low_magnitude_mask_overlap": {
            str(q): _reference_overlap(np.abs(w0), update, q, False) for q in GEOMETRY_MASK_PERCENTS
        },
        "update_stable_rank": nd / sd[0] ** 2,
        "update_effective_rank": math.exp(-(p * np.log(p)).sum()),
        "rank_energy": {str(r): (sd[:r] ** 2).sum() / nd for r in RANK_ENERGY_RANKS},
        "singular_values_a": s0[:k],
        "singular_values_delta": sd[:k],
    }


def _random_pair(seed: int, m: int = 64, n: int = 48):
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(m, n, generator=g)
    update = torch.rand(m, n, generator=g) < 0.3
    w1 = w0 + update * (0.05 * torch.randn(m, n, generator=g) + 0.1 * torch.outer(torch.randn(m, generator=g),
                                                                                  torch.randn(n, generator=g)))
    return w0, w1, update


@pytest.mark.parametrize("seed", [0, 1])
def test_exact_matches_float64_reference(seed):
    w0, w1, update = _random_pair(seed)
    k = 8
    g = geometry_stats(w0, w1, update, k=k, exact=True)
    ref = _reference(w0.double().numpy(), w1.double().numpy(), update.numpy(), k)
    assert g.principal_angle_max_deg == pytest.approx(ref["principal_angle"][0], abs=1e-3)
    assert g.principal_angle_mean_sin2 == pytest.approx(ref["principal_angle"][1], rel=1e-4, abs=1e-7)
    assert g.principal_angle_max_deg_right == pytest.approx(ref["principal_angle_right"][0], abs=1e-3)
    assert g.principal_angle_mean_sin2_right == pytest.approx(ref["principal_angle_right"][1], rel=1e-4, abs=1e-7)
    # drift is a difference of float32 singular values: absolute error ≈ ε·σ_1/σ_k
    assert g.spectrum_drift_mean == pytest.approx(ref["spectrum_drift_mean"], abs=1e-6)
    assert g.spectrum_drift_max == pytest.approx(ref["spectrum_drift_max"], abs=1e-6)
    for name in ("stable_rank_a", "stable_rank_b", "principal_energy",
                 "principal_energy_left", "principal_energy_right", "update_stable_rank", "update_effective_rank"):
        assert getattr(g, name) == pytest.approx(ref[name], rel=1e-4), name
    for r in RANK_ENERGY_RANKS:
        assert g.rank_energy[str(r)] == pytest.approx(ref["rank_energy"][str(r)], rel=1e-5)
    # |U0 Σ0 V0ᵀ| in float32 vs float64 may order elements at the threshold differently: ±1 element.
    changed = int(update.sum())
    for q in GEOMETRY_MASK_PERCENTS:
        assert g.principal_mask_overlap[str(q)] == pytest.approx(ref["principal_mask_overlap"][str(q)], abs=1 / changed)
        low = ref["low_magnitude_mask_overlap"][str(q)]
        assert g.low_magnitude_mask_overlap[str(q)] == pytest.approx(low, abs=1e-12)
    np.testing.assert_allclose(g.singular_values_a, ref["singular_values_a"], rtol=1e-5)
    np.testing.assert_allclose(g.singular_values_delta, ref["singular_values_delta"], rtol=1e-4)


def test_low_magnitude_ties_of_bf16_weights_match_reference():
    # bf16 N(0, 0.02²) has only ~2^8 values per octave: thousands of ties at every threshold.
    g = torch.Generator().manual_seed(11)
    w0 = (0.02 * torch.randn(300, 200, generator=g)).to(torch.bfloat16)
    update = torch.rand(300, 200, generator=g) < 0.3
    stats = geometry_stats(w0, w0, update, k=8)
    values = w0.float().abs().numpy()
    assert len(np.unique(values)) < values.size / 20
    for q in GEOMETRY_MASK_PERCENTS:
        expected = _reference_overlap(values, update.numpy(), q, largest=False)
        assert stats.low_magnitude_mask_overlap[str(q)] == pytest.approx(expected, abs=1e-12)


def test_mask_overlaps_do_not_depend_on_row_blocks(monkeypatch):
    w0, w1, _ = _random_pair(4, 96, 80)
    whole = geometry_stats(w0, w1, k=8, exact=True)
    monkeypatch.setattr(geometry, "BLOCK_ELEMENTS", 7 * 80)  # 14 blocks of 7 rows (last one shorter)
    blocked = geometry_stats(w0, w1, k=8, exact=True)
    assert blocked.principal_mask_overlap == whole.principal_mask_overlap
    assert blocked.low_magnitude_mask_overlap == whole.low_magnitude_mask_overlap


def test_randomized_matches_exact_on_decaying_spectrum():
    # σ_i = i^-1 plus noise, 256 × 128, k = 16: the documented randomized accuracy regime.
    w0 = _power_law(256, 128, 1.0, 1e-3, 0)
    g = torch.Generator().manual_seed(9)
    update = torch.rand(256, 128, generator=g) < 0.2
    w1 = w0 + update * 1e-3 * torch.randn(256, 128, generator=g)
    exact = geometry_stats(w0, w1, k=16, exact=True)
    approx = geometry_stats(w0, w1, k=16)
    np.testing.assert_allclose(approx.singular_values_a[:8], exact.singular_values_a[:8], rtol=1e-5)
    np.testing.assert_allclose(approx.singular_values_a, exact.singular_values_a, rtol=1e-3)
    for name in ("principal_energy", "principal_energy_left", "principal_energy_right", "stable_rank_a",
                 "update_stable_rank"):
        assert getattr(approx, name) == pytest.approx(getattr(exact, name), rel=1e-3), name
    assert approx.principal_angle_mean_sin2 == pytest.approx(exact.principal_angle_mean_sin2, rel=0.05)
    for q in GEOMETRY_MASK_PERCENTS:
        assert approx.principal_mask_overlap[str(q)] == pytest.approx(exact.principal_mask_overlap[str(q)], abs=0.01)
    assert approx.rank_energy["16"] == pytest.approx(exact.rank_energy["16"], rel=0.02)


def test_randomized_svd_recovers_a_low_rank_matrix():
    w, u, s, v = _matrix_with_spectrum([8.0, 4.0, 2.0, 1.0, 0.5], 300, 200)
    ur, sr, vr = randomized_svd(w.float(), 5, power_iterations=0)
    np.testing.assert_allclose(sr.double(), s, rtol=1e-5)
    assert torch.allclose((ur.double().T @ u[:, :5]).abs(), torch.eye(5, dtype=torch.float64), atol=1e-5)
    assert torch.allclose((vr.double().T @ v[:, :5]).abs(), torch.eye(5, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(randomized_singular_values(w.float(), 5, power_iterations=0), sr, rtol=1e-6)


def test_same_seed_same_numbers():
    w0, w1, _ = _random_pair(5, 128, 96)
    assert geometry_stats(w0, w1, k=8, generator_seed=3) == geometry_stats(w0, w1, k=8, generator_seed=3)


# --------------------------------------------------------------------------- batching and dtypes


def _close(a, b, tol):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[x], b[x], tol) for x in a)
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=tol, abs_tol=tol)
    return a == b


def _assert_stats_close(a, b, tol):
    for name in a.__dataclass_fields__:
        assert _close(getattr(a, name), getattr(b, name), tol), (name, getattr(a, name), getattr(b, name))


@pytest.mark.parametrize("exact", [True, False])
def test_batched_equals_unbatched(exact):
    pairs = []
    for seed, (m, n, dtype) in enumerate([(64, 48, torch.float32), (32, 40, torch.bfloat16), (64, 48, torch.float32),
                                          (32, 40, torch.bfloat16), (64, 48, torch.float32)]):
        w0, w1, update = _random_pair(seed, m, n)
        pairs.append((w0.to(dtype), w1.to(dtype), update if seed % 2 == 0 and dtype == torch.float32 else None))
    batched = geometry_stats_batched(pairs, k=8, exact=exact)
    for (w0, w1, update), stats in zip(pairs, batched):
        _assert_stats_close(stats, geometry_stats(w0, w1, update, k=8, exact=exact), 1e-4)


def test_bf16_default_mask_is_bitwise_change():
    w0 = _power_law(64, 48, 0.5, 0.1, 0).to(torch.bfloat16)
    w1 = (w0.float() + 1e-3 * torch.randn(64, 48, generator=torch.Generator().manual_seed(1))).to(torch.bfloat16)
    changed = w0.view(torch.int16) != w1.view(torch.int16)
    assert 0 < int(changed.sum()) < changed.numel()
    assert geometry_stats(w0, w1, k=8) == geometry_stats(w0, w1, changed, k=8)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("exact", [True, False])
def test_cuda_matches_cpu(exact):
    pairs = [tuple(x.to(torch.bfloat16) if i < 2 else x for i, x in enumerate(_random_pair(s, 300, 200)))
             for s in range(3)]
    cpu = geometry_stats_batched(pairs, k=16, exact=exact)
    cuda = geometry_stats_batched([tuple(x.cuda() for x in p) for p in pairs], k=16, exact=exact)
    for a, b in zip(cpu, cuda):
        _assert_stats_close(a, b, 2e-3)
