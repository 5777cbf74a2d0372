import math
from dataclasses import replace

import torch

from dynamics.element_stats import ElementStats
from dynamics.kernels.elementwise_cpu import element_stats_cpu
from dynamics.metrics import derived_metrics, metrics_needing


def _pair_3x4():
    a = torch.tensor([[1.0, 2.0, 3.0, 0.0], [0.5, -1.0, 0.0, 4.0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.bfloat16)
    b = a.clone()
    b[0, 0] = 1.0078125  # next bf16 above 1.0: 1 ULP
    b[1, 2] = -0.0  # ±0 flip: changed bits, no movement
    b[2, 3] = 2.0  # 1.0 → 2.0 is 128 bf16 ULPs
    return a, b


def test_derived_metrics_of_hand_computed_pair():
    s = element_stats_cpu(*_pair_3x4())
    m = derived_metrics(s)
    assert s.changed == 3 and s.moved == 2 and s.changed_signed_zero == 1
    assert m["bitwise_sparsity"] == 1 - 3 / 12
    # Δ = (0.0078125, 1.0): ‖Δ‖² = 1 + 2^-14; ‖W0‖² = 1+4+9+0.25+1+16+4 = 35.25
    assert math.isclose(m["update_norm"], math.sqrt(1 + 2**-14))
    assert math.isclose(m["relative_update_norm"], math.sqrt((1 + 2**-14) / 35.25))
    assert m["one_ulp_fraction"] == 0.5
    assert math.isclose(m["mean_abs_delta_moved"], (1.0 + 0.0078125) / 2)
    assert m["abs_tolerance_sparsity"]["1e-05"] == 10 / 12
    assert m["unchanged_row_fraction"] == 0.0  # every row has a changed element
    assert m["unchanged_col_fraction"] == 1 / 4  # only column 1 untouched
    assert m["hidden_by_bf16_fraction"] is None  # bf16 pair


def test_ratios_with_zero_denominator_are_none_not_nan():
    m = derived_metrics(ElementStats.zero())
    for name in ("bitwise_sparsity", "relative_update_norm", "one_ulp_fraction", "mean_abs_delta_moved"):
        assert m[name] is None, name


def test_every_registered_metric_is_in_the_derived_row():
    assert set(derived_metrics(ElementStats.zero())) == set(metrics_needing("element"))


def test_aggregate_is_element_weighted():
    big = replace(ElementStats.zero(), numel=90, changed=9)
    small = replace(ElementStats.zero(), numel=10, changed=10)
    assert derived_metrics(big + small)["bitwise_sparsity"] == 1 - 19 / 100
