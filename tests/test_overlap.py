"""Cross-run consistency: hand-built masks with known Jaccard, chance and consensus profiles."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from dynamics import diff
from dynamics.cli import main
from dynamics.masks import changed_mask
from dynamics.metrics import overlap_metrics
from dynamics.overlap import mask_counts, overlap
from dynamics.overlap_result import OverlapResult
from tests.checkpoint_factory import write_safetensors

Q = "model.layers.0.self_attn.q_proj.weight"
NORM = "model.layers.0.input_layernorm.weight"


def _flags(n: int, on: list[int]) -> torch.Tensor:
    mask = torch.zeros(n, dtype=torch.bool)
    mask[on] = True
    return mask


def test_jaccard_chance_and_shares_of_hand_built_masks():
    # M1 = {0,1,2,3}, M2 = {0,1,4,5} of n = 10: ∩ = 2, ∪ = 6, p = q = 0.4.
    counts, votes = mask_counts([_flags(10, [0, 1, 2, 3]), _flags(10, [0, 1, 4, 5])])
    m = overlap_metrics(counts)
    assert counts.updated == (4, 4) and counts.intersections == (2,)
    assert m["jaccard"]["0-1"] == pytest.approx(2 / 6)
    assert m["jaccard_chance"]["0-1"] == pytest.approx(0.16 / (0.8 - 0.16))  # pq/(p+q−pq) = 0.25
    assert m["jaccard_over_chance"]["0-1"] == pytest.approx((1 / 3) / 0.25)
    assert m["overlap_coefficient"]["0-1"] == pytest.approx(0.5)
    assert m["updated_by_all_share"] == pytest.approx(0.2)
    assert m["updated_by_none_share"] == pytest.approx(0.4)
    assert votes.tolist() == [2, 2, 1, 1, 1, 1, 0, 0, 0, 0]


def test_three_runs_mean_over_pairs_and_empty_masks():
    masks = [_flags(8, [0, 1]), _flags(8, [0, 1]), _flags(8, [])]
    m = overlap_metrics(mask_counts(masks)[0])
    assert m["jaccard"] == {"0-1": 1.0, "0-2": 0.0, "1-2": 0.0}
    assert m["overlap_coefficient"]["0-2"] is None  # one run changed nothing
    assert m["jaccard_chance"]["0-2"] == 0.0 and m["jaccard_over_chance"]["0-2"] is None
    assert m["mean_jaccard"] == pytest.approx(1 / 3)
    none = overlap_metrics(mask_counts([_flags(4, []), _flags(4, [])])[0])
    assert none["jaccard"]["0-1"] is None and none["mean_jaccard"] is None


def _runs(tmp_path):
    """A 4 × 5 bf16 q_proj and a norm; run r changes a known set of elements by one ULP."""
    g = torch.Generator().manual_seed(0)
    base = {Q: torch.randn(4, 5, generator=g).to(torch.bfloat16), NORM: torch.ones(5, dtype=torch.bfloat16)}
    changes = {"r1": [0, 1, 2, 3, 5], "r2": [0, 1, 2, 6, 10], "r3": [0, 1, 7]}  # flat indices of Q
    paths = {"base": write_safetensors(tmp_path / "base", base)}
    for run, flat in changes.items():
        q = base[Q].clone().view(-1)
        q.view(torch.int16)[flat] += 1
        paths[run] = write_safetensors(tmp_path / run, {Q: q.view(4, 5), NORM: base[NORM]})
    return paths, changes


def test_overlap_of_three_runs_per_tensor_kind_and_profiles(tmp_path):
    paths, changes = _runs(tmp_path)
    result = overlap(paths["base"], [paths["r1"], paths["r2"], paths["r3"]], device="cpu", save_consensus=True)
    doc = result.to_json()
    q_row = next(r for r in doc["tensors"] if r["name"] == Q)
    assert q_row["updated"] == [5, 5, 3] and q_row["intersections"] == [3, 2, 2]
    assert q_row["jaccard"]["0-1"] == pytest.approx(3 / 7)
    p, q = 5 / 20, 5 / 20
    assert q_row["jaccard_chance"]["0-1"] == pytest.approx(p * q / (p + q - p * q))
    assert q_row["updated_by_all"] == 2 and q_row["updated_by_none"] == 20 - 8
    assert doc["by_module_kind"]["norm"]["updated"] == [0, 0, 0]
    assert doc["summary"]["numel"] == 25 and doc["by_layer"]["0"]["intersections"] == [3, 2, 2]
    votes = np.zeros(20)
    for flat in changes.values():
        votes[flat] += 1
    record = next(r for r in result.records if r.name == Q)
    np.testing.assert_allclose(record.row_profile, votes.reshape(4, 5).mean(1) / 3)
    np.testing.assert_allclose(record.col_profile, votes.reshape(4, 5).mean(0) / 3)
    np.testing.assert_array_equal(result.consensus[Q], votes.reshape(4, 5))
    assert OverlapResult.from_json(doc).to_json() == doc


def test_overlap_cli_writes_json_and_h5(tmp_path, capsys):
    paths, _ = _runs(tmp_path)
    out_json, out_h5 = tmp_path / "o.json", tmp_path / "o.h5"
    code = main(["overlap", str(paths["base"]), str(paths["r1"]), str(paths["r2"]), "--device", "cpu",
                 "--json", str(out_json), "--h5", str(out_h5), "--save-consensus"])
    assert code == 0 and "mean Jaccard" in capsys.readouterr().out
    assert OverlapResult.read_json(out_json).summary().intersections == (3,)
    with h5py.File(out_h5) as f:
        assert f["consensus"][Q].shape == (4, 5) and f["row_profile"][Q].shape == (4,)
    assert main(["overlap", str(paths["base"]), str(paths["r1"])]) == 2  # one run is not a comparison


def test_diff_result_mask_unpacks_kept_masks_and_recomputes_tolerance(tmp_path):
    paths, changes = _runs(tmp_path)
    result = diff(paths["base"], paths["r1"], device="cpu", save_masks=True)
    mask = result.mask(Q)
    assert mask.dtype == torch.bool and mask.shape == (4, 5)
    assert mask.view(-1).nonzero().view(-1).tolist() == changes["r1"]
    assert dict(result.masks()).keys() == {Q, NORM}
    assert not result.mask(Q, tolerance=1.0).any()  # one-ULP moves are below |Δ| = 1
    assert result.mask(Q, tolerance=0.0).equal(mask)
    from dynamics.errors import MaskError
    with pytest.raises(MaskError, match="save_masks"):
        diff(paths["base"], paths["r1"], device="cpu").mask(Q)


def test_change_rules_on_signed_zero_and_small_relative_moves():
    a = torch.tensor([0.0, 1.0, 1.0, 1e-6, float("nan")])
    b = torch.tensor([-0.0, 1.0 + 2**-23, 1.01, 2e-6, float("nan")])
    assert changed_mask(a, b).tolist() == [True, True, True, True, False]
    assert changed_mask(a, b, "eta").tolist() == [False, False, True, True, False]  # ±0 unchanged
    assert changed_mask(a, b, 1e-5).tolist() == [False, False, True, False, False]
