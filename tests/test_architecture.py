"""The structure issue 10 set: layers never import upward, one registry feeds every output, typed round trips."""

from __future__ import annotations

import ast
import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from dynamics import diff
from dynamics.cli import main
from dynamics.devices import resolve_device
from dynamics.errors import DynamicsError
from dynamics.geometry_options import GeometryOptions
from dynamics.metrics import METRICS, register, unregister
from dynamics.result import DiffResult
from dynamics.summary import format_summary
from tests.checkpoint_factory import write_safetensors

ROOT = Path(__file__).resolve().parent.parent


def _layer(module: str) -> int | None:
    """core dynamics 0 < probes 1 < reports 2 < the CLI and the demo recipe 3; None outside the project."""
    parts = module.split(".")
    if parts[0] == "dynamics":
        return 3 if parts[1:2] in (["cli"], ["demo"]) else 0
    return {"probes": 1, "reports": 2}.get(parts[0])


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for package in ("dynamics", "probes", "reports"):
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            mine = _layer(module)
            for line, name in _imports(path):
                theirs = _layer(name)
                if theirs is not None and theirs > mine:
                    upward.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert upward == []


def test_the_layer_walk_sees_an_upward_import(tmp_path):
    fake = tmp_path / "m.py"
    fake.write_text("from reports.document import Report\nimport dynamics.cli\n")
    assert [(_layer(n)) for _, n in _imports(fake)] == [2, 3]


def _pair(tmp_path: Path) -> tuple[Path, Path]:
    g = torch.Generator().manual_seed(5)
    base = {"model.layers.0.self_attn.q_proj.weight": torch.randn(12, 10, generator=g),
            "model.layers.0.mlp.up_proj.weight": torch.randn(14, 10, generator=g),
            "model.layers.1.self_attn.q_proj.weight": torch.randn(12, 10, generator=g),
            "model.norm.weight": torch.randn(10, generator=g)}
    tuned = {k: v + 1e-3 * torch.randn(v.shape, generator=g) * (torch.rand(v.shape, generator=g) < 0.5)
             for k, v in base.items()}
    return write_safetensors(tmp_path / "a", base), write_safetensors(tmp_path / "b", tuned)


@pytest.fixture()
def toy_metric():
    """A registered toy ratio: share of elements that changed sign-of-zero or non-finite among changed."""

    @register("element", "toy odd-change share", ".3f", headline=True)
    def toy_odd_change_share(s):
        """(changed_signed_zero + changed_nonfinite) / changed; None when nothing changed."""
        return (s.changed_signed_zero + s.changed_nonfinite) / s.changed if s.changed else None

    yield "toy_odd_change_share"
    unregister("toy_odd_change_share")


def test_a_registered_metric_reaches_json_terminal_and_report_without_other_edits(tmp_path, toy_metric, capsys):
    a, b = _pair(tmp_path)
    result = diff(a, b, device="cpu")
    doc = result.to_json()
    assert doc["summary"][toy_metric] == 0.0 and all(row[toy_metric] == 0.0 for row in doc["tensors"])
    assert all(toy_metric in row for row in doc["by_module_kind"].values())
    assert "toy odd-change share" in format_summary(result)
    assert main(["report", "sparsity", str(a), str(b), "-o", str(tmp_path / "r"), "--device", "cpu", "-q"]) == 0
    assert "toy odd-change share" in (tmp_path / "r" / "sparsity.md").read_text()


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ValueError, match="registered twice"):
        register("element", "again")(METRICS["bitwise_sparsity"].fn)


def test_per_kind_principal_ratio_is_one_number_in_terminal_json_and_three_gate(tmp_path, capsys):
    a, b = _pair(tmp_path)
    result = diff(a, b, device="cpu", geometry=GeometryOptions(k=3))
    by_kind = result.to_json()["geometry"]["by_module_kind"]
    weighted = {}
    for kind, records in result.module_kind_groups().items():
        matrices = [r for r in records if r.geometry is not None]
        if matrices:  # Σ ρ_k‖Δ‖² / Σ baseline‖Δ‖², written out independently of the registry
            num = sum(r.geometry.principal_energy * r.stats.sum_sq_delta for r in matrices)
            den = sum(r.geometry.principal_energy_baseline * r.stats.sum_sq_delta for r in matrices)
            weighted[kind] = num / den
    assert set(weighted) == {"q", "up"}
    for kind, value in weighted.items():
        assert by_kind[kind]["principal_energy_ratio"] == pytest.approx(value, rel=1e-12)
    terminal = format_summary(result).split("Update geometry")[1]
    for kind, value in weighted.items():
        line = next(line for line in terminal.splitlines() if line.startswith(kind + " "))
        assert f"{value:.2f}" in line.split()
    json_path = tmp_path / "d.json"
    assert main(["diff", str(a), str(b), "--device", "cpu", "-q", "--geometry", "--rank-k", "3",
                 "--json", str(json_path)]) == 0
    assert main(["report", "three-gate", str(json_path), "-o", str(tmp_path / "g"), "-q"]) == 0
    table = (tmp_path / "g" / "data" / "three-gate-principal-energy.csv").read_text()
    for kind, value in weighted.items():
        row = next(line for line in table.splitlines() if line.startswith(kind + ","))
        assert float(row.split(",")[-1]) == pytest.approx(value, rel=1e-9)


def test_diff_result_reads_back_from_its_json(tmp_path):
    a, b = _pair(tmp_path)
    result = diff(a, b, device="cpu", geometry=GeometryOptions(k=3))
    doc = json.loads(json.dumps(result.to_json()))
    again = DiffResult.from_json(doc)
    assert json.loads(json.dumps(again.to_json())) == doc
    assert [r.stats for r in again.records] == [r.stats for r in result.records]


def test_batched_geometry_in_diff_equals_one_matrix_at_a_time(tmp_path):
    """Same numbers up to float32 rounding (BLAS results depend on memory alignment; angles near 0° are
    the most sensitive, arccos of a cosine within 1e-7 of 1)."""
    from safetensors.torch import load_file

    from dynamics.geometry import geometry_stats

    a, b = _pair(tmp_path)
    result = diff(a, b, device="cpu", geometry=GeometryOptions(k=3))
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    matrices = [r for r in result.records if r.geometry is not None]
    assert len(matrices) == 3
    for r in matrices:
        alone = asdict(geometry_stats(wa[r.name], wb[r.name], k=3))
        batched = asdict(r.geometry)
        assert batched.keys() == alone.keys()
        for key, value in alone.items():
            assert batched[key] == pytest.approx(value, rel=1e-3, abs=1e-6), key


def test_cuda_without_triton_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("dynamics.devices.triton_available", lambda: False)
    with pytest.raises(DynamicsError, match="needs Triton"):
        resolve_device("cuda", kernels=True)
    assert resolve_device("auto", kernels=True).type == "cpu"
    assert resolve_device("auto").type == "cuda"


def test_geometry_options_refuse_a_rank_below_one():
    with pytest.raises(ValueError):
        GeometryOptions(k=0)
