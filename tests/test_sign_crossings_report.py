"""Sign crossings in the terminal summary and the sparsity report: their own bucket, said in the caption."""

import csv

import torch

from dynamics import diff
from dynamics.summary import format_summary
from reports.sparsity import render_sparsity_report
from tests.checkpoint_factory import write_safetensors


def _crossing_result(tmp_path):
    a = torch.tensor([[-1.0e-4, 0.5, 0.25, 1e-3]], dtype=torch.bfloat16)
    b = torch.tensor([[1.08e-4, 0.5, 0.25 + 2**-9, 1e-3]], dtype=torch.bfloat16)  # a crossing and a 1-ULP move
    name = "model.layers.0.mlp.up_proj.weight"
    return diff(write_safetensors(tmp_path / "a", {name: a}), write_safetensors(tmp_path / "b", {name: b}), device="cpu")


def test_summary_shows_sign_crossings_apart_from_ulp_buckets(tmp_path):
    result = _crossing_result(tmp_path)
    text = format_summary(result)
    assert "(2 moved)" in text
    crossing = next(line for line in text.splitlines() if "sign crossing" in line)
    assert "50.00%" in crossing and "no ULP distance" in crossing
    assert "16385-32768 ULP" not in text  # −1e-4 → 1.08e-4 is no longer a 29,000-ULP move


def test_sparsity_report_caption_and_data_name_the_sign_bucket(tmp_path):
    out = tmp_path / "report"
    render_sparsity_report(_crossing_result(tmp_path), out)
    markdown = (out / "sparsity.md").read_text()
    assert "Sign crossings (W0·W1 < 0, neither ±0) are their own bar, not a ULP distance" in markdown
    data = next(p for p in (out / "data").iterdir() if "ulp" in p.name)
    rows = {row[0]: row[1:] for row in csv.reader(data.open())}
    assert rows["sign crossing"] == ["1"] and rows["1"] == ["1"] and rows["16385-32768"] == ["0"]
