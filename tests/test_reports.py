"""Reports render from a real tiny diff: every promised file exists, the HTML stands alone, data
files parse, missing inputs are stated, and the gate readings follow their thresholds."""

import csv
import json
import re

import pytest
import torch

from dynamics import diff
from reports.load import ReportError, load_diff_doc, pooled_metrics
from reports.readings import (HIDDEN_MOSTLY, KL_PROBE_COMMAND, OFF_PRINCIPAL_RATIO, ON_PRINCIPAL_RATIO,
                              SPARSE_BITWISE, kl_reading, precision_reading, principal_energy_reading)
from reports.sparsity import render_sparsity_report
from reports.three_gate import render_three_gate_report
from tests.checkpoint_factory import write_safetensors


def _tensors(dtype):
    g = torch.Generator().manual_seed(7)
    base = {"model.embed_tokens.weight": torch.randn(24, 16, generator=g), "lm_head.weight": torch.randn(24, 16, generator=g)}
    for layer in range(2):
        prefix = f"model.layers.{layer}."
        base[prefix + "self_attn.q_proj.weight"] = torch.randn(16, 16, generator=g)
        base[prefix + "self_attn.v_proj.weight"] = torch.randn(8, 16, generator=g)
        base[prefix + "mlp.down_proj.weight"] = torch.randn(16, 32, generator=g)
        base[prefix + "input_layernorm.weight"] = torch.ones(16)
    tuned = {}
    for name, t in base.items():
        touched = torch.rand(t.shape, generator=g) < 0.3
        tuned[name] = t + 1e-3 * torch.randn(t.shape, generator=g) * touched
    return {n: t.to(dtype) for n, t in base.items()}, {n: t.to(dtype) for n, t in tuned.items()}


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    """dynamics.diff/1 documents of a bf16 and a float32 pair, with geometry at k = 4."""
    out = {}
    for label, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        root = tmp_path_factory.mktemp(label)
        base, tuned = _tensors(dtype)
        result = diff(write_safetensors(root / "base", base), write_safetensors(root / "tuned", tuned),
                      device="cpu", geometry=True, rank_k=4)
        out[label] = result.to_json()
    return out


def _promised_files(html_path, name):
    out_dir = html_path.parent
    html = html_path.read_text()
    figures = sorted((out_dir / "figures").glob(f"{name}-*.png"))
    data = sorted((out_dir / "data").glob(f"{name}-*.csv"))
    return html, (out_dir / f"{name}.md").read_text(), figures, data


@pytest.mark.parametrize("label", ["bf16", "fp32"])
@pytest.mark.parametrize("render, name", [(render_sparsity_report, "sparsity"),
                                          (render_three_gate_report, "three-gate")])
def test_report_writes_markdown_standalone_html_figures_and_data(docs, tmp_path, label, render, name):
    html_path = render(docs[label], tmp_path)
    assert html_path == tmp_path / f"{name}.html"
    html, markdown, figures, data = _promised_files(html_path, name)
    assert figures and len(figures) == len(data)
    assert {f.stem for f in figures} == {d.stem for d in data}
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "no network reference"
    assert "<script" not in html and "<link" not in html
    assert html.count('src="data:image/png;base64,') == len(figures)
    for figure in figures:
        assert figure.read_bytes().startswith(b"\x89PNG")
        assert f"figures/{figure.name}" in markdown
    for path in data:
        rows = list(csv.reader(path.open()))
        assert len(rows) >= 2 and all(len(row) == len(rows[0]) for row in rows)
    assert not list(tmp_path.rglob(".*.tmp-*")), "no temporary file left behind"


def test_sparsity_report_numbers_come_from_the_document(docs, tmp_path):
    doc = docs["bf16"]
    markdown = render_sparsity_report(doc, tmp_path).with_suffix(".md").read_text()
    assert f"{doc['summary']['bitwise_sparsity']:.4f}" in markdown
    rows = list(csv.DictReader((tmp_path / "data" / "sparsity-per-layer.csv").open()))
    assert [float(r["bitwise_sparsity"]) for r in rows] == [doc["by_layer"][r["layer"]]["bitwise_sparsity"] for r in rows]
    grid = list(csv.DictReader((tmp_path / "data" / "sparsity-grid-bitwise-sparsity.csv").open()))
    q_layer0 = next(t for t in doc["tensors"] if t["name"] == "model.layers.0.self_attn.q_proj.weight")
    assert float(grid[0]["q"]) == pytest.approx(q_layer0["bitwise_sparsity"])
    assert "No float32 pairs" in markdown


def test_float32_pair_shows_share_hidden_by_bf16(docs, tmp_path):
    doc = docs["fp32"]
    markdown = render_sparsity_report(doc, tmp_path).with_suffix(".md").read_text()
    assert f"{doc['by_dtype']['float32']['hidden_by_bf16_fraction']:.4f}" in markdown
    rows = list(csv.DictReader((tmp_path / "data" / "sparsity-hidden.csv").open()))
    assert {r["module_kind"] for r in rows} == {"q", "v", "down", "embed", "lm_head", "norm"}


def test_document_without_geometry_says_what_to_run(docs, tmp_path):
    doc = {k: v for k, v in docs["bf16"].items() if k != "geometry"}
    html = render_three_gate_report(doc, tmp_path).read_text()
    assert "dynamics diff A B --geometry" in html
    assert "Missing input" in html
    assert KL_PROBE_COMMAND in html  # Gate I states its missing input too
    assert not (tmp_path / "figures" / "three-gate-principal-energy.png").exists()


def test_diff_result_path_and_dict_load_to_the_same_document(docs, tmp_path):
    path = tmp_path / "diff.json"
    path.write_text(json.dumps(docs["bf16"]))
    assert load_diff_doc(path) == load_diff_doc(docs["bf16"])
    with pytest.raises(ReportError, match="dynamics.diff/1"):
        load_diff_doc({"schema": "something/else"})
    with pytest.raises(ReportError, match="cannot read"):
        load_diff_doc(tmp_path / "missing.json")


def test_pooled_metrics_match_the_documents_own_aggregates(docs):
    doc = docs["fp32"]
    pooled = pooled_metrics([t for t in doc["tensors"] if t["layer"] == 1])
    assert pooled["bitwise_sparsity"] == pytest.approx(doc["by_layer"]["1"]["bitwise_sparsity"])
    assert pooled["relative_update_norm"] == pytest.approx(doc["by_layer"]["1"]["relative_update_norm"])


@pytest.mark.parametrize("energy, baseline, starts", [
    (0.003, 0.01, "off-principal: update energy in the top-k block is 0.3× the random baseline"),
    (0.05, 0.01, "on-principal: update energy in the top-k block is 5× the random baseline"),
    (0.01, 0.01, "indistinguishable from random directions: update energy in the top-k block is 1×"),
    (OFF_PRINCIPAL_RATIO * 0.01, 0.01, "indistinguishable"),  # thresholds are strict
    (ON_PRINCIPAL_RATIO * 0.01, 0.01, "indistinguishable"),
    (None, 0.01, "no update energy"),
])
def test_principal_energy_reading_thresholds(energy, baseline, starts):
    assert principal_energy_reading(energy, baseline).startswith(starts)


def test_principal_energy_reading_adds_rotation():
    assert principal_energy_reading(0.003, 0.01, 0.088).endswith("rotate by 0.088° at most (mean over matrices).")


def test_precision_reading_thresholds():
    assert precision_reading(0.85, ["bfloat16"]) == "sparse under bf16: 85.0% of the weights are bit-identical."
    assert precision_reading(SPARSE_BITWISE, ["bfloat16"]).startswith("dense under bf16")
    fp32 = precision_reading(0.0007, ["float32"], hidden_by_bf16=0.85)
    assert fp32 == ("dense under fp32: 0.070% of the weights are bit-identical; "
                    "stored as bf16, 85.0% of the moved weights would not move.")
    assert "only 10.0%" in precision_reading(0.0, ["float32"], hidden_by_bf16=min(0.1, HIDDEN_MOSTLY))


def test_kl_reading_names_the_missing_probe_and_classes_the_update_norm():
    assert kl_reading(None, 1.9e-4).endswith("‖Δ‖/‖W0‖ = 1.90e-04, a small update (< 0.001).")
    assert KL_PROBE_COMMAND in kl_reading(None, 0.18)
    assert "a large update" in kl_reading(None, 0.18)
    assert "a moderate update" in kl_reading(None, 5e-3)
    assert kl_reading(0.012, 1e-4) == "KL drift: 0.012 nats per token (on-policy, KL(π_B ‖ π_A))."
