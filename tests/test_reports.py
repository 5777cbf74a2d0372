"""Reports render from a real tiny diff: every promised file exists, the HTML stands alone, data
files parse, missing inputs are stated, registered metrics appear by their label, and the gate
readings follow their thresholds."""

import csv
import json
import re
from dataclasses import replace

import pytest
import torch

from dynamics import diff
from dynamics.errors import DynamicsError
from dynamics.geometry_options import GeometryOptions
from dynamics.metrics import METRICS, format_value, register, unregister
from dynamics.pairing import Unpaired
from dynamics.result import DiffResult
from probes.fisher import FisherResult
from probes.kl import KLResult
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
from reports.sparsity import layer_kind_grid, render_sparsity_report
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
                      device="cpu", geometry=GeometryOptions(k=4))
        out[label] = result.to_json()
    return out


@pytest.fixture(scope="module")
def results(docs):
    """The documents read back as `DiffResult`s, as `dynamics report` reads a diff.json."""
    return {label: DiffResult.from_json(doc) for label, doc in docs.items()}


def _promised_files(html_path, name):
    out_dir = html_path.parent
    html = html_path.read_text()
    figures = sorted((out_dir / "figures").glob(f"{name}-*.png"))
    data = sorted((out_dir / "data").glob(f"{name}-*.csv"))
    return html, (out_dir / f"{name}.md").read_text(), figures, data


@pytest.mark.parametrize("label", ["bf16", "fp32"])
@pytest.mark.parametrize("render, name", [(render_sparsity_report, "sparsity"),
                                          (render_three_gate_report, "three-gate")])
def test_report_writes_markdown_standalone_html_figures_and_data(results, tmp_path, label, render, name):
    html_path = render(results[label], tmp_path)
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


def test_sparsity_report_numbers_come_from_the_document(docs, results, tmp_path):
    doc = docs["bf16"]
    markdown = render_sparsity_report(results["bf16"], tmp_path).with_suffix(".md").read_text()
    assert f"{doc['summary']['bitwise_sparsity']:.4f}" in markdown
    rows = list(csv.DictReader((tmp_path / "data" / "sparsity-per-layer.csv").open()))
    assert [float(r["bitwise_sparsity"]) for r in rows] == [doc["by_layer"][r["layer"]]["bitwise_sparsity"] for r in rows]
    grid = list(csv.DictReader((tmp_path / "data" / "sparsity-grid-bitwise-sparsity.csv").open()))
    q_layer0 = next(t for t in doc["tensors"] if t["name"] == "model.layers.0.self_attn.q_proj.weight")
    assert float(grid[0]["q"]) == pytest.approx(q_layer0["bitwise_sparsity"])
    assert "No float32 pairs" in markdown


def test_float32_pair_shows_share_hidden_by_bf16(docs, results, tmp_path):
    doc = docs["fp32"]
    markdown = render_sparsity_report(results["fp32"], tmp_path).with_suffix(".md").read_text()
    assert f"{doc['by_dtype']['float32']['hidden_by_bf16_fraction']:.4f}" in markdown
    rows = list(csv.DictReader((tmp_path / "data" / "sparsity-hidden.csv").open()))
    assert {r["module_kind"] for r in rows} == {"q", "v", "down", "embed", "lm_head", "norm"}


def test_document_without_geometry_says_what_to_run(results, tmp_path):
    result = results["bf16"]
    without = replace(result, records=[replace(r, geometry=None) for r in result.records], geometry_skipped=[])
    html = render_three_gate_report(without, tmp_path).read_text()
    assert "dynamics diff A B --geometry" in html
    assert "Missing input" in html
    assert KL_PROBE_COMMAND in html  # Gate I states its missing input too
    assert not (tmp_path / "figures" / "three-gate-principal-energy.png").exists()


def test_report_of_the_json_file_is_the_report_of_the_result(docs, results, tmp_path):
    path = tmp_path / "diff.json"
    path.write_text(json.dumps(docs["bf16"]))
    from_file = render_sparsity_report(DiffResult.read_json(path), tmp_path / "file").with_suffix(".md")
    from_result = render_sparsity_report(results["bf16"], tmp_path / "result").with_suffix(".md")
    assert from_file.read_text() == from_result.read_text()
    with pytest.raises(DynamicsError, match="dynamics.diff/1"):
        DiffResult.from_json({"schema": "something/else"})
    with pytest.raises(DynamicsError, match="cannot read"):
        DiffResult.read_json(tmp_path / "missing.json")


def test_layer_kind_grid_cells_are_the_registered_metric_of_their_tensors(docs, results):
    layers, kinds, grid = layer_kind_grid(results["fp32"], "relative_update_norm")
    for t in docs["fp32"]["tensors"]:
        if t["layer"] is not None:  # one tensor per (layer, kind) in this model
            assert grid[layers.index(str(t["layer"]))][kinds.index(t["module_kind"])] == \
                pytest.approx(t["relative_update_norm"])


def test_sparsity_report_lists_every_registered_headline_metric(docs, results, tmp_path):
    doc = docs["bf16"]
    markdown = render_sparsity_report(results["bf16"], tmp_path).with_suffix(".md").read_text()
    section = markdown.split("## Registered headline metrics")[1].split("\n## ")[0]
    for name, metric in METRICS.items():
        if metric.needs == "element" and metric.headline:
            assert metric.label.replace("|", "\\|") in section  # Markdown escapes | in a cell
            assert format_value(name, doc["summary"][name]) in section
            assert format_value(name, doc["by_module_kind"]["q"][name]) in section


def test_a_newly_registered_metric_appears_in_the_reports_without_other_edits(results, tmp_path):
    @register("element", "toy share of changed elements", ".3f", headline=True)
    def toy_changed_share(s):
        return None if s.numel == 0 else s.changed / s.numel

    @register("matrix", "toy matrix count", ".0f")
    def toy_matrix_count(records):
        return float(len(records))

    try:
        sparsity = render_sparsity_report(results["bf16"], tmp_path / "s").with_suffix(".md").read_text()
        assert "toy share of changed elements" in sparsity
        assert format_value("toy_changed_share", toy_changed_share(results["bf16"].summary())) in sparsity
        gate = render_three_gate_report(results["bf16"], tmp_path / "g").with_suffix(".md").read_text()
        assert "| module kind | " in gate and "toy matrix count" in gate
    finally:
        unregister("toy_changed_share")
        unregister("toy_matrix_count")


def test_three_gate_per_kind_ratio_is_the_registered_json_value(docs, results, tmp_path):
    by_kind = docs["bf16"]["geometry"]["by_module_kind"]
    markdown = render_three_gate_report(results["bf16"], tmp_path).with_suffix(".md").read_text()
    rows = list(csv.DictReader((tmp_path / "data" / "three-gate-principal-energy.csv").open()))
    assert rows and {r["module_kind"] for r in rows} == {k for k, m in by_kind.items() if m}
    label = METRICS["principal_energy_ratio"].label
    after_caption = markdown.split("Registered matrix metrics")[1].split("\n\n")[1]  # the table's lines
    table = [_cells(line) for line in after_caption.splitlines() if not line.startswith("|--")]
    column = table[0].index(label)
    shown = {cells[0]: cells[column] for cells in table[1:]}
    for r in rows:
        value = by_kind[r["module_kind"]]["principal_energy_ratio"]
        assert float(r["principal_energy_ratio"]) == pytest.approx(value)
        assert shown[r["module_kind"]] == format_value("principal_energy_ratio", value)
    assert shown["**all matrices**"] == format_value("principal_energy_ratio",
                                                     docs["bf16"]["geometry"]["summary"]["principal_energy_ratio"])


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_dtype_mismatches_are_said_to_be_compared_not_left_out(results, tmp_path):
    unpaired = Unpaired(only_a=["extra.weight"], dtype_mismatch=[
        {"name": "lm_head.weight", "dtype_a": "float32", "dtype_b": "bfloat16", "compared_as": "bfloat16"}])
    markdown = render_sparsity_report(replace(results["bf16"], unpaired=unpaired), tmp_path).with_suffix(".md")
    text = markdown.read_text()
    left_out = next(line for line in text.splitlines() if line.startswith("Not in these numbers"))
    assert "1 only in A" in left_out and "dtype" not in left_out
    assert "1 tensor (float32 vs bfloat16, compared as bfloat16); they are in these numbers" in text


@pytest.mark.parametrize("ratio, starts", [
    (0.3, "off-principal: update energy in the top-k block is 0.3× the random baseline"),
    (5.0, "on-principal: update energy in the top-k block is 5× the random baseline"),
    (1.0, "indistinguishable from random directions: update energy in the top-k block is 1×"),
    (OFF_PRINCIPAL_RATIO, "indistinguishable"),  # thresholds are strict
    (ON_PRINCIPAL_RATIO, "indistinguishable"),
    (None, "no update energy"),
])
def test_principal_energy_reading_thresholds(ratio, starts):
    assert principal_energy_reading(ratio).startswith(starts)


def test_principal_energy_reading_adds_rotation():
    assert principal_energy_reading(0.3, 0.088).endswith("rotate by 0.088° at most (mean over matrices).")


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


@pytest.mark.parametrize("share, over_chance, starts", [
    (0.05, 5.0,
     "concentrated on high-curvature coordinates: 5.0% of ‖Δ‖² on the top-1% Fisher coordinates (5× chance)"),
    (0.003, 0.3, "avoids high-curvature coordinates: 0.3% of ‖Δ‖²"),
    (0.01, 1.0, "at chance, blind to curvature: 1.0%"),
    (0.02, FISHER_ALIGNED_RATIO, "at chance, blind to curvature"),  # thresholds are strict
    (0.005, FISHER_AVOIDED_RATIO, "at chance, blind to curvature"),
    (None, None, "no update energy"),
])
def test_fisher_reading_thresholds(share, over_chance, starts):
    assert fisher_reading(share, over_chance, 1).startswith(starts)


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


def test_three_gate_with_kl_and_fisher_shows_them_beside_the_weight_numbers(results, tmp_path):
    kl_path = tmp_path / "kl.json"
    kl_path.write_text(json.dumps(_kl_doc()))
    html_path = render_three_gate_report(results["bf16"], tmp_path / "out", kl=KLResult.read_json(kl_path),
                                         fisher=FisherResult.from_json(_fisher_doc()))
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


def test_three_gate_without_kl_or_fisher_names_both_probe_commands(docs, results, tmp_path):
    markdown = render_three_gate_report(results["bf16"], tmp_path).with_suffix(".md").read_text()
    assert f"dynamics probe kl {docs['bf16']['a']['path']} {docs['bf16']['b']['path']} --prompts P --json kl.json" \
        in markdown
    assert "--fisher fisher.json" in markdown and "dynamics probe fisher" in markdown


def test_a_kl_file_of_another_schema_is_refused_where_it_is_read(tmp_path):
    bad = tmp_path / "kl.json"
    bad.write_text(json.dumps({"schema": "dynamics.fisher/1"}))
    with pytest.raises(DynamicsError, match="kl.json: expected a dynamics.kl/1 document"):
        KLResult.read_json(bad)


def test_report_command_passes_kl_and_fisher_to_the_three_gate_report(docs, tmp_path, capsys):
    from dynamics.cli import main

    (tmp_path / "diff.json").write_text(json.dumps(docs["bf16"]))
    (tmp_path / "kl.json").write_text(json.dumps(_kl_doc()))
    (tmp_path / "fisher.json").write_text(json.dumps(_fisher_doc()))
    assert main(["report", "three-gate", str(tmp_path / "diff.json"), "-o", str(tmp_path / "out"),
                 "--kl", str(tmp_path / "kl.json"), "--fisher", str(tmp_path / "fisher.json")]) == 0
    markdown = (tmp_path / "out" / "three-gate.md").read_text()
    assert "0.0123" in markdown and "Curvature:" in markdown
    with pytest.raises(SystemExit) as refused:  # --kl is the three-gate report's flag only
        main(["report", "sparsity", str(tmp_path / "diff.json"), "-o", str(tmp_path / "s"),
              "--kl", str(tmp_path / "kl.json")])
    assert refused.value.code == 2 and "unrecognized arguments: --kl" in capsys.readouterr().err


def test_gate_one_says_on_policy_only_when_the_kl_file_says_so(results, tmp_path):
    def gate_one(sampling: dict) -> str:
        kl = KLResult.from_json({**_kl_doc(), "sampling": sampling})
        out = tmp_path / str(len(sampling))
        markdown = render_three_gate_report(results["bf16"], out, kl=kl).with_suffix(".md").read_text()
        return markdown.split("## Gate I")[1].split("## Gate II")[0]

    read_from_file = gate_one({"on_policy": False, "chat_template": True})
    assert "on-policy" not in read_from_file and "off-policy" in read_from_file
    sampled = gate_one({"on_policy": True, "samples_per_prompt": 4, "temperature": 1.0})
    assert "on-policy" in sampled and "off-policy" not in sampled
