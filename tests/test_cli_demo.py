import json

from dynamics.cli import main


def test_demo_prints_side_by_side_and_writes_diffs(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "-q", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "rl (bf16)" in out and "sft (fp32 master)" in out and "hidden by bf16" in out
    rl = json.loads((tmp_path / "diff-base-vs-rl.json").read_text())["summary"]
    sft = json.loads((tmp_path / "diff-base-vs-sft.json").read_text())["summary"]
    assert rl["bitwise_sparsity"] > sft["bitwise_sparsity"]
    masters = json.loads((tmp_path / "diff-base_fp32-vs-rl_fp32.json").read_text())["summary"]
    assert masters["hidden_by_bf16"] > 0
