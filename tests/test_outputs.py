import json

import h5py
import numpy as np
import pytest
import torch

from dynamics.api import diff
from dynamics.documents import atomic_path
from dynamics.masks import pack_mask, unpack_mask
from dynamics.outputs import write_h5, write_json
from tests.memory_checkpoint import memory_checkpoint


def _result(save_masks=False):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 7, generator=g).to(torch.bfloat16)
    w2 = w.clone()
    w2[1, 2] = 1e3
    w2[4, 6] = -w2[4, 6]
    a = memory_checkpoint({"model.layers.0.mlp.up_proj.weight": w, "model.norm.weight": torch.ones(7)}, "A")
    b = memory_checkpoint({"model.layers.0.mlp.up_proj.weight": w2, "model.norm.weight": torch.ones(7)}, "B")
    return diff(a, b, device="cpu", save_masks=save_masks), w, w2


def test_json_has_the_contract_fields(tmp_path):
    result, _, _ = _result()
    write_json(result, tmp_path / "d.json")
    doc = json.loads((tmp_path / "d.json").read_text())
    assert doc["schema"] == "dynamics.diff/1"
    assert {"numel", "changed", "bitwise_sparsity", "relative_update_norm"} <= set(doc["summary"])
    row = doc["tensors"][0]
    for key in ("name", "shape", "dtype", "numel", "changed", "bitwise_sparsity", "ulp_histogram", "sum_sq_delta",
                "sum_sq_a", "sum_sq_b", "max_abs_delta", "hidden_by_bf16"):
        assert key in row, key
    assert doc["summary"]["changed"] == 2 and doc["summary"]["numel"] == 42
    assert doc["by_module_kind"]["up"]["changed"] == 2 and doc["by_layer"]["0"]["numel"] == 35


def test_h5_rows_and_masks_round_trip(tmp_path):
    result, w, w2 = _result(save_masks=True)
    write_h5(result, tmp_path / "d.h5")
    with h5py.File(tmp_path / "d.h5") as f:
        assert list(f["tensors/name"].asstr()[:]) == [r.name for r in result.records]
        assert f["tensors/changed"][:].tolist() == [2, 0]
        assert f["tensors/ulp_histogram"].shape == (2, 33)
        rows = f["tensors/rows"][:]
        assert rows[0] == 5 and np.isnan(rows[1])  # 1-D norm has no rows: NaN, as JSON null
        assert np.isnan(f["tensors/layer"][1]) and f["tensors/layer"][0] == 0
        assert [s.tolist() for s in f["tensors/shape"][:]] == [[5, 7], [7]]
        assert list(f["tensors/dtype"].asstr()[:]) == ["bfloat16", "float32"]
        assert f["tensors/name"].dtype.metadata["vlen"] is str and h5py.check_string_dtype(
            f["tensors/name"].dtype).encoding == "utf-8"
        crossings = int((w.float() * w2.float() < 0).sum())  # w2[4, 6] = −w[4, 6], and maybe w2[1, 2] = 1e3
        assert f["tensors/sign_crossings"][:].tolist() == [crossings, 0] and crossings >= 1
        ulp = f["tensors/ulp_histogram"]
        assert list(ulp.attrs["bucket_labels"][:3]) == ["1", "2", "3-4"] and ulp.attrs["bucket_upper_edges"][2] == 4
        assert f["tensors/within_abs"].attrs["tau"].tolist() == [1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3]
        assert "most significant bit first" in f["masks"].attrs["bit_order"]
        mask = unpack_mask(f["masks/model.layers.0.mlp.up_proj.weight"][:], (5, 7))
        assert json.loads(f["diff_json"][()])["schema"] == "dynamics.diff/1"
    expected = np.zeros((5, 7), dtype=bool)
    expected[1, 2] = expected[4, 6] = True
    assert (mask == expected).all()


def test_pack_mask_matches_numpy_packbits():
    mask = torch.rand(13, 5, generator=torch.Generator().manual_seed(1)) > 0.5
    assert (pack_mask(mask) == np.packbits(mask.numpy().reshape(-1))).all()


def test_failed_write_leaves_no_file(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_survives_a_failed_write(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("new")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
