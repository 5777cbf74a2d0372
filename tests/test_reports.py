"""Reports render from a real tiny diff: every promised file exists, the HTML stands alone, data
files parse, missing inputs are stated, and the gate readings follow their thresholds."""

import csv
import json
import re

import pytest
import torch

from dynamics import diff
from reports.load import ReportError, load_diff_doc, pooled_metrics
from reports.readings import (
    FISHER_ALIGNED_RATIO,
    FISHER_AVOIDED_RATIO,
    HIDDEN_MOSTLY,
    KL_PROBE_COMMAND,
    LARGE_KL_NATS,
    OFF_PRINCIPAL_RATIO,
    ON_PRINCIPAL_RATIO,
    SMALL_KL_NATS,
    SPARSE_BITWISE,
    fisher_reading,
    kl_reading,
    precision_reading,
    principal_energy_reading,
)
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
    assert kl_reading(0.012, 1e-4) == ("KL drift: 0.012 nats per token (on-policy, KL(π_B ‖ π_A)), a moderate "
                                       "drift (0.01 … 0.1); in weight space ‖Δ‖/‖W0‖ = 1.00e-04.")


@pytest.mark.parametrize("mean, words", [(0.003, "a small drift (< 0.01)"), (SMALL_KL_NATS, "a moderate drift"),
                                         (LARGE_KL_NATS, "a moderate drift"), (0.25, "a large drift (> 0.1)")])
def test_kl_reading_classes_the_measured_drift(mean, words):
    reading = kl_reading(mean, None, kl_p95_per_token=0.5)
    assert words in reading and reading.endswith("; 95th percentile 0.5.")


@pytest.mark.parametrize("share, starts", [
    (0.05, "concentrated on high-curvature coordinates: 5.0% of ‖Δ‖² on the top-1% Fisher coordinates (5× chance)"),
    (0.003, "avoids high-curvature coordinates: 0.3% of ‖Δ‖²"),
    (0.01, "at chance, blind to curvature: 1.0%"),
    (FISHER_ALIGNED_RATIO * 0.01, "at chance, blind to curvature"),  # thresholds are strict
    (FISHER_AVOIDED_RATIO * 0.01, "at chance, blind to curvature"),
    (None, "no update energy"),
])
def test_fisher_reading_thresholds(share, starts):
    assert fisher_reading(share, 1).startswith(starts)


def _kl_doc(base="base", tuned="tuned"):
    """A hand-written dynamics.kl/1 document (the probe's contract)."""
    return {"schema": "dynamics.kl/1", "base": base, "tuned": tuned, "kl_mean_per_token": 0.0123,
            "kl_median_per_token": 0.004, "kl_p95_per_token": 0.061, "kl_reverse_mean_per_token": None,
            "kl_mean_per_sequence": 0.79, "tokens": 6400, "sequences": 100,
            "top_tokens": [{"token": " the", "token_id": 5, "count": 300, "kl_sum": 2.5, "kl_mean": 0.0083},
                           {"token": "\\boxed", "token_id": 77, "count": 40, "kl_sum": 9.25, "kl_mean": 0.231},
                           {"token": "`", "token_id": 9, "count": 3, "kl_sum": 0.1, "kl_mean": 0.033}],
            "sampling": {"samples_per_prompt": 4, "temperature": 1.0}}


def _fisher_doc():
    """A hand-written dynamics.fisher/1 document (the probe's contract)."""
    return {"schema": "dynamics.fisher/1", "base": "base", "tuned": "tuned", "q_percent": [1, 5, 10], "samples": 64,
            "tensors": [{"name": "model.layers.0.self_attn.q_proj.weight", "share_top_q": {"1": 0.002, "5": 0.02,
                         "10": 0.05}, "spearman": -0.1, "n_changed": 80}],
            "model": {"share_top_q": {"1": 0.003, "5": 0.021, "10": 0.048}, "spearman_median": -0.1}}


def test_three_gate_with_kl_and_fisher_shows_them_beside_the_weight_numbers(docs, tmp_path):
    kl_path = tmp_path / "kl.json"
    kl_path.write_text(json.dumps(_kl_doc()))
    html_path = render_three_gate_report(docs["bf16"], tmp_path / "out", kl=kl_path, fisher=_fisher_doc())
    markdown = html_path.with_suffix(".md").read_text()
    gate1 = markdown.split("## Gate I")[1].split("## Gate II")[0]
    assert "| KL(π_B ‖ π_A), mean per token (nats) | 0.0123 |" in gate1
    assert "| … 95th percentile per token (nats) | 0.061 |" in gate1
    assert "relative update norm ‖Δ‖_F / ‖W0‖_F" in gate1
    assert "Missing input" not in gate1
    # top tokens by summed KL, whitespace and backticks made visible
    token_rows = [line for line in gate1.splitlines() if line.startswith("| `")]
    assert [row.split("|")[1].strip() for row in token_rows] == ["`\\boxed`", "`␣the`", "`ˋ`"]
    assert "a moderate drift" in gate1 and "95th percentile 0.061" in gate1
    gate2 = markdown.split("## Gate II")[1].split("## Gate III")[0]
    assert "| q = 1% | 0.0030 | 0.0100 | 0.3 |" in gate2
    assert "Curvature: avoids high-curvature coordinates: 0.3% of ‖Δ‖² on the top-1% Fisher coordinates" in gate2
    rows = list(csv.DictReader((tmp_path / "out" / "data" / "three-gate-fisher.csv").open()))
    assert [(r["q_percent"], r["share_top_q"]) for r in rows] == [("1.0", "0.003"), ("5.0", "0.021"), ("10.0", "0.048")]


def test_three_gate_without_kl_or_fisher_names_both_probe_commands(docs, tmp_path):
    markdown = render_three_gate_report(docs["bf16"], tmp_path).with_suffix(".md").read_text()
    assert f"dynamics probe kl {docs['bf16']['a']['path']} {docs['bf16']['b']['path']} --prompts P --json kl.json" \
        in markdown
    assert "--fisher fisher.json" in markdown and "dynamics probe fisher" in markdown


def test_three_gate_rejects_a_kl_file_of_another_schema(docs, tmp_path):
    bad = tmp_path / "kl.json"
    bad.write_text(json.dumps({"schema": "dynamics.fisher/1"}))
    with pytest.raises(ReportError, match="kl.json: expected a dynamics.kl/1 document"):
        render_three_gate_report(docs["bf16"], tmp_path, kl=bad)


def test_report_command_passes_kl_and_fisher_to_the_three_gate_report(docs, tmp_path, capsys):
    from dynamics.cli import main

    (tmp_path / "diff.json").write_text(json.dumps(docs["bf16"]))
    (tmp_path / "kl.json").write_text(json.dumps(_kl_doc()))
    (tmp_path / "fisher.json").write_text(json.dumps(_fisher_doc()))
    assert main(["report", "three-gate", str(tmp_path / "diff.json"), "-o", str(tmp_path / "out"),
                 "--kl", str(tmp_path / "kl.json"), "--fisher", str(tmp_path / "fisher.json")]) == 0
    markdown = (tmp_path / "out" / "three-gate.md").read_text()
    assert "0.0123" in markdown and "Curvature:" in markdown
    assert main(["report", "sparsity", str(tmp_path / "diff.json"), "-o", str(tmp_path / "s"),
                 "--kl", str(tmp_path / "kl.json")]) == 2
    assert "belong to the three-gate report" in capsys.readouterr().err
