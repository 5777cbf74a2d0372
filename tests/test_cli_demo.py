import json

from lab_fixture import micro_lab_config

import dynamics.demo
from dynamics.cli import main


def test_demo_trains_the_lab_prints_trajectories_side_by_side_and_writes_diffs_and_reports(tmp_path, capsys,
                                                                                           monkeypatch):
    # The demo's own preset (tiny) takes minutes; the micro preset runs the same road in seconds.
    monkeypatch.setitem(dynamics.demo.LAB_PRESETS, "tiny", micro_lab_config())
    assert main(["demo", "--out", str(tmp_path), "-q", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for column in ("true", "format", "random", "incorrect", "sft", "true (fp32)", "sft (fp32)"):
        assert column in out
    assert "hidden by bf16" in out and "report three-gate sft" in out and "report compare (all runs)" in out
    assert "Held-out trajectories" in out and "p(code)" in out and "sampled_code_rate" in out
    assert "grpo-random@code-helps" in out and "p(code) Δ" in out and "code_rate Δ" in out
    assert "moved the style" in out
    if "no spurious reward moved" in out:
        assert "docs/lab-results.md" in out
    behavior = json.loads((tmp_path / "behavior.json").read_text())
    assert behavior["schema"] == "dynamics.behavior/1" and {s["run"] for s in behavior["shifts"]} >= {"sft@code-helps"}
    manifest = json.loads((tmp_path / "lab" / "manifest.json").read_text())
    assert [e["seed"] for e in manifest["runs"]] == [1] * 5
    rl = json.loads((tmp_path / "diffs" / "random.json").read_text())["summary"]
    sft = json.loads((tmp_path / "diffs" / "sft.json").read_text())["summary"]
    assert rl["bitwise_sparsity"] > sft["bitwise_sparsity"]
    masters = json.loads((tmp_path / "diffs" / "sft-fp32.json").read_text())["summary"]
    assert masters["hidden_by_bf16"] > 0
    for name in ("sparsity-true/sparsity.html", "three-gate-sft/three-gate.html", "compare/compare.html"):
        assert (tmp_path / "reports" / name).is_file()


def test_demo_refuses_a_folder_that_holds_another_lab(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(dynamics.demo.LAB_PRESETS, "tiny", micro_lab_config())
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "manifest.json").write_text('{"size": "small", "runs": []}')
    assert main(["demo", "--out", str(tmp_path), "-q", "--device", "cpu"]) == 2
    assert "already holds a lab study of size 'small'" in capsys.readouterr().err
