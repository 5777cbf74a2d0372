"""The magnitude-stratified chance of the Gate II mask overlaps: hand-built cases first, then float64."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from dynamics import geometry
from dynamics.element_stats import ElementStats
from dynamics.geometry import GEOMETRY_MASK_PERCENTS, geometry_stats, stratified_chance
from dynamics.metrics import METRICS, matrix_metrics
from dynamics.result import TensorRecord

SMALL, LARGE = 40, 60  # elements of |W0| in [2^-8, 2^-7) and in [1, 2): two exponent buckets


def _two_bucket_w0(dtype=torch.float32) -> torch.Tensor:
    """10 × 10: rows 0–3 hold 2^-8·(1 + i/64), i = 0..39 (bucket 2^-8), rows 4–9 hold 1 + i/64, i = 0..59.
    Every value is exact in bf16. Bottom-p% of |W0| (p ≤ 20) = the p smallest of the small bucket;
    top-p% of the exact rank-10 reconstruction (= W0) = the largest of the large bucket."""
    small = 2.0**-8 * (1 + torch.arange(SMALL, dtype=torch.float64) / 64)
    large = 1 + torch.arange(LARGE, dtype=torch.float64) / 64
    return torch.cat([small, large]).view(10, 10).to(dtype)


def test_stratified_chance_formula_by_hand():
    # Buckets of 40 and 60 elements; 10 flips, all in the first: f = (1/4, 0). A mask holding 20 of the
    # first bucket and 5 of the second: (1/4·20 + 0·5) / 10 = 0.5.
    assert stratified_chance([40, 60], [10, 0], [20, 5]) == pytest.approx(0.5)
    # Equal flip rates in every bucket give the plain chance |M| / N: f = 1/10, (4 + 6)/10 / 10 = 10/100.
    assert stratified_chance([40, 60], [4, 6], [4, 6]) == pytest.approx(10 / 100)
    assert stratified_chance([40, 60], [0, 0], [20, 5]) is None
    assert stratified_chance([0, 60], [0, 6], [0, 6]) == pytest.approx(6 / 60 * 6 / 6)


def test_every_small_weight_flipping_is_all_precision():
    # All 40 small weights flip, none of the large: f = (1, 0). The bottom-p% mask holds p of the small
    # ones, so overlap = p/40 (2.5 × chance p/100), and the stratified chance is 1·p / 40: the same.
    # The principal (top-p%) mask holds only large weights: overlap 0, stratified chance 0 (not "below chance").
    w0 = _two_bucket_w0()
    update = torch.zeros(10, 10, dtype=torch.bool)
    update[:4] = True
    g = geometry_stats(w0, w0 + update * 2.0**-12, update, k=10, exact=True)
    for p in GEOMETRY_MASK_PERCENTS:
        assert g.low_magnitude_mask_overlap[str(p)] == pytest.approx(p / 40)
        assert g.low_magnitude_mask_stratified_chance[str(p)] == pytest.approx(p / 40)
        assert g.principal_mask_overlap[str(p)] == 0.0
        assert g.principal_mask_stratified_chance[str(p)] == 0.0


def test_bf16_rounding_of_a_uniform_shift_is_all_precision():
    # Δ = 2^-12 everywhere, stored back in bf16: 8 ULPs of a 2^-8 weight, less than half a ULP (2^-8)
    # of a weight in [1, 2). The bitwise update is exactly the small bucket, whatever the geometry.
    w0 = _two_bucket_w0(torch.bfloat16)
    w1 = (w0.float() + 2.0**-12).to(torch.bfloat16)
    g = geometry_stats(w0, w1, k=10, exact=True)
    assert g.low_magnitude_mask_overlap["10"] == pytest.approx(10 / 40)  # 2.5 × the chance 0.1 …
    assert g.low_magnitude_mask_stratified_chance["10"] == pytest.approx(10 / 40)  # … all of it precision
    assert g.principal_mask_overlap["10"] == 0.0
    assert g.principal_mask_stratified_chance["10"] == 0.0


def test_flips_at_the_smallest_weights_of_a_bucket_exceed_the_stratified_chance():
    # 10 flips at the 10 smallest weights of the small bucket: f = (10/40, 0). The bottom-10% mask is those
    # 10: overlap 1.0; stratified chance 1/4·10 / 10 = 0.25, so 4× remains once precision is accounted for.
    # Bottom-20% = the 20 smallest: overlap 1.0, stratified 1/4·20 / 10 = 0.5.
    w0 = _two_bucket_w0()
    update = torch.zeros(100, dtype=torch.bool)
    update[:10] = True
    update = update.view(10, 10)
    g = geometry_stats(w0, w0 + update * 2.0**-12, update, k=10, exact=True)
    assert g.low_magnitude_mask_overlap["10"] == pytest.approx(1.0)
    assert g.low_magnitude_mask_stratified_chance["10"] == pytest.approx(0.25)
    assert g.low_magnitude_mask_stratified_chance["20"] == pytest.approx(0.5)
    assert g.low_magnitude_mask_stratified_chance["1"] == pytest.approx(1 / 4 * 1 / 10)


def test_uniform_flip_rate_gives_the_plain_chance():
    # A random update on float32 weights: every bucket flips at about the same rate, so the stratified
    # chance is close to p (and to the observed overlap).
    gen = torch.Generator().manual_seed(5)
    w0 = torch.randn(200, 100, generator=gen)
    update = torch.rand(200, 100, generator=gen) < 0.5
    g = geometry_stats(w0, w0 + update * 0.01, update, k=8)
    for p in GEOMETRY_MASK_PERCENTS:
        assert g.low_magnitude_mask_stratified_chance[str(p)] == pytest.approx(p / 100, abs=0.02)
        assert g.principal_mask_stratified_chance[str(p)] == pytest.approx(p / 100, abs=0.02)


def test_no_update_gives_none():
    w0 = _two_bucket_w0()
    g = geometry_stats(w0, w0.clone(), k=4, exact=True)
    assert set(g.low_magnitude_mask_stratified_chance.values()) == {None}
    assert set(g.principal_mask_stratified_chance.values()) == {None}


# --------------------------------------------------------------------------- float64 reference


def _reference_stratified(values: np.ndarray, w0: np.ndarray, update: np.ndarray, percent: int,
                          largest: bool, tiny: float) -> float:
    """Σ_e f_e·|M ∩ B_e| / |U|, B_e the binary exponent of |W0| (frexp) with zero and the subnormals below
    `tiny` (the dtype's smallest normal, where the ULP stops shrinking) in one bucket; mask ties split evenly."""
    v, u = values.ravel(), update.ravel()
    floor = np.frexp(tiny)[1] - 1
    exponent = np.where(np.abs(w0.ravel()) < tiny, floor, np.frexp(np.abs(w0.ravel()))[1])
    size = percent * v.size / 100
    ordered = np.sort(v)[::-1] if largest else np.sort(v)
    threshold = ordered[math.ceil(size) - 1]
    beyond = v > threshold if largest else v < threshold
    equal = v == threshold
    member = beyond + equal * (size - beyond.sum()) / equal.sum()
    total = 0.0
    for e in np.unique(exponent):
        bucket = exponent == e
        total += u[bucket].sum() / bucket.sum() * member[bucket].sum()
    return total / u.sum()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_low_magnitude_stratified_chance_matches_float64_reference(dtype):
    # N(0, 0.02²) weights with ties (and fp16 subnormals below 6.1e-5); flips more likely for small |W0|.
    gen = torch.Generator().manual_seed(7)
    w0 = (0.02 * torch.randn(120, 90, generator=gen)).to(dtype)
    if dtype == torch.float16:
        assert bool((w0.abs() < torch.finfo(dtype).tiny).any())
    magnitude = w0.float().abs()
    update = torch.rand(120, 90, generator=gen) < 0.6 * torch.exp(-magnitude / 0.02)
    g = geometry_stats(w0, w0, update, k=8)
    values, w0_64 = magnitude.double().numpy(), w0.double().numpy()
    for p in GEOMETRY_MASK_PERCENTS:
        expected = _reference_stratified(values, w0_64, update.numpy(), p, False, torch.finfo(dtype).tiny)
        assert g.low_magnitude_mask_stratified_chance[str(p)] == pytest.approx(expected, abs=1e-12)


def test_principal_stratified_chance_matches_float64_reference():
    gen = torch.Generator().manual_seed(8)
    w0 = torch.randn(64, 48, generator=gen)
    update = torch.rand(64, 48, generator=gen) < 0.4 * torch.exp(-w0.abs())
    k = 48  # full rank: the reconstruction is W0 itself up to float32 error, far below the values' spacing
    g = geometry_stats(w0, w0, update, k=k, exact=True)
    values = w0.abs().double().numpy()
    for p in GEOMETRY_MASK_PERCENTS:
        expected = _reference_stratified(values, w0.double().numpy(), update.numpy(), p, True, torch.finfo(w0.dtype).tiny)
        assert g.principal_mask_stratified_chance[str(p)] == pytest.approx(expected, abs=1e-9)


def test_stratified_chance_does_not_depend_on_row_blocks(monkeypatch):
    gen = torch.Generator().manual_seed(9)
    w0 = (0.02 * torch.randn(96, 80, generator=gen)).to(torch.bfloat16)
    w1 = (w0.float() + 1e-4 * torch.randn(96, 80, generator=gen)).to(torch.bfloat16)
    whole = geometry_stats(w0, w1, k=8, exact=True)
    monkeypatch.setattr(geometry, "BLOCK_ELEMENTS", 7 * 80)
    blocked = geometry_stats(w0, w1, k=8, exact=True)
    assert blocked.low_magnitude_mask_stratified_chance == whole.low_magnitude_mask_stratified_chance
    assert blocked.principal_mask_stratified_chance == whole.principal_mask_stratified_chance


# --------------------------------------------------------------------------- registered group metrics


def _record(name: str, geometry_stats_, changed: int) -> TensorRecord:
    stats = replace(ElementStats.zero(), numel=100, changed=changed)
    return TensorRecord(name, 0, "q", (10, 10), "float32", stats, geometry_stats_)


def test_registered_overlaps_pool_changed_elements_and_divide_by_the_stratified_chance():
    # Matrix A: the 40 small weights flip (overlap 0.25, stratified 0.25 at p = 10%); matrix B: the 10
    # smallest flip (overlap 1.0, stratified 0.25). Pooled over 50 changed elements:
    # overlap (0.25·40 + 1·10)/50 = 0.4, stratified (0.25·40 + 0.25·10)/50 = 0.25, ratio 1.6.
    w0 = _two_bucket_w0()
    all_small, smallest = torch.zeros(100, dtype=torch.bool), torch.zeros(100, dtype=torch.bool)
    all_small[:40], smallest[:10] = True, True
    records = [_record(name, geometry_stats(w0, w0 + m.view(10, 10) * 2.0**-12, m.view(10, 10), k=10, exact=True),
                       int(m.sum())) for name, m in (("a", all_small), ("b", smallest))]
    values = matrix_metrics(records)
    assert values["low_magnitude_overlap"] == pytest.approx(0.4)
    assert values["low_magnitude_stratified_chance"] == pytest.approx(0.25)
    assert values["low_magnitude_overlap_over_stratified"] == pytest.approx(1.6)
    assert values["principal_overlap"] == 0.0 and values["principal_stratified_chance"] == 0.0
    assert values["principal_overlap_over_stratified"] is None  # 0 / 0: nothing to compare


def test_results_without_the_stratified_field_give_none():
    w0 = _two_bucket_w0()
    old = replace(geometry_stats(w0, w0 + 2.0**-12, k=4, exact=True), low_magnitude_mask_stratified_chance={})
    assert matrix_metrics([_record("a", old, 100)])["low_magnitude_stratified_chance"] is None


def test_median_ratio_counts_each_matrix_once():
    base = geometry_stats(_two_bucket_w0(), _two_bucket_w0() + 2.0**-12, k=4, exact=True)
    # baseline k²/(mn) = 16/100; ρ_k = 0.16·(1, 3, 10) → ratios 1, 3, 10 whatever the Δ energies
    records = [_record(str(i), replace(base, principal_energy=0.16 * r, principal_energy_baseline=0.16), 1)
               for i, r in enumerate((10, 1, 3))]
    assert METRICS["principal_energy_ratio_median"].fn(records) == pytest.approx(3.0)
    fourth = _record("4", replace(base, principal_energy=0.16 * 5, principal_energy_baseline=0.16), 1)
    assert METRICS["principal_energy_ratio_median"].fn([*records, fourth]) == pytest.approx(4.0)
    assert METRICS["principal_energy_ratio_median"].fn([]) is None
