"""`dynamics diff` over real files: formats agree, bad input gives one line and exit code 2."""

import json
import struct
from fractions import Fraction

import pytest
import torch

from dynamics import diff
from dynamics.cli import main
from tests.checkpoint_factory import lora_pair, write_bin, write_lora_adapter, write_safetensors


def _base_and_tuned():
    g = torch.Generator().manual_seed(3)
    base = {
        "model.embed_tokens.weight": torch.randn(32, 16, generator=g).to(torch.bfloat16),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(16, 16, generator=g).to(torch.bfloat16),
        "model.layers.0.mlp.down_proj.weight": torch.randn(16, 24, generator=g),
        "model.layers.1.input_layernorm.weight": torch.randn(16, generator=g).to(torch.float16),
        "model.norm.weight": torch.ones(16, dtype=torch.bfloat16),
        "model.empty": torch.zeros(0, 4, dtype=torch.bfloat16),
    }
    tuned = {}
    for name, t in base.items():
        noise = torch.randn(t.shape, generator=g) * 1e-2 * (torch.rand(t.shape, generator=g) < 0.3)
        tuned[name] = (t.float() + noise).to(t.dtype)
    return base, tuned


@pytest.fixture()
def pair(tmp_path):
    base, tuned = _base_and_tuned()
    return write_safetensors(tmp_path / "base", base), write_safetensors(tmp_path / "tuned", tuned)


def _rows(result):
    return {r.name: r.stats for r in result.records}


def test_every_format_gives_identical_stats(tmp_path):
    base, tuned = _base_and_tuned()
    reference = _rows(diff(write_safetensors(tmp_path / "a1", base), write_safetensors(tmp_path / "b1", tuned), device="cpu"))
    variants = [
        (write_safetensors(tmp_path / "a2", base, shards=3), write_safetensors(tmp_path / "b2", tuned, shards=2)),
        (write_bin(tmp_path / "a3", base), write_bin(tmp_path / "b3", tuned, shards=2)),
        (write_safetensors(tmp_path / "a4", base) / "model.safetensors", write_bin(tmp_path / "b4", tuned)),
    ]
    for a, b in variants:
        assert _rows(diff(a, b, device="cpu")) == reference
    assert len(reference) == 6 and sum(s.changed for s in reference.values()) > 0


def test_lora_adapter_diff_equals_diff_against_manually_merged_weights(tmp_path):
    base, _ = _base_and_tuned()
    module = "model.layers.0.self_attn.q_proj"
    lora = lora_pair(module, 16, 16, r=2, seed=1)
    for key in lora:
        lora[key] = lora[key] * 0.05
    adapter = write_lora_adapter(tmp_path / "adapter", lora, r=2, lora_alpha=4, target_modules=["q_proj"])
    merged = dict(base)
    w = base[module + ".weight"].float()
    delta = 2.0 * lora[f"base_model.model.{module}.lora_B.weight"] @ lora[f"base_model.model.{module}.lora_A.weight"]
    merged[module + ".weight"] = (w + delta).to(torch.bfloat16)
    a = write_safetensors(tmp_path / "base", base)
    via_adapter = diff(a, adapter, device="cpu")
    via_merged = diff(a, write_safetensors(tmp_path / "merged", merged), device="cpu")
    assert _rows(via_adapter) == _rows(via_merged)
    assert _rows(via_adapter)[module + ".weight"].changed > 0
    assert "LoRA" in via_adapter.b.format


def test_cli_prints_summary_and_writes_json_and_h5(pair, tmp_path, capsys):
    a, b = pair
    code = main(["diff", str(a), str(b), "--device", "cpu", "-q", "--json", str(tmp_path / "d.json"),
                 "--h5", str(tmp_path / "d.h5"), "--save-masks"])
    out = capsys.readouterr().out
    assert code == 0
    for heading in ("bitwise sparsity", "relative update norm", "ULP distance", "Most changed", "Least changed",
                    "Per module kind"):
        assert heading in out
    doc = json.loads((tmp_path / "d.json").read_text())
    assert doc["summary"]["tensors"] == 6
    assert (tmp_path / "d.h5").stat().st_size > 0


def test_nan_and_inf_are_counted_and_reported_not_crashing(tmp_path, capsys):
    base, tuned = _base_and_tuned()
    tuned["model.norm.weight"][3] = float("nan")
    tuned["model.norm.weight"][4] = float("inf")
    a, b = write_safetensors(tmp_path / "a", base), write_safetensors(tmp_path / "b", tuned)
    assert main(["diff", str(a), str(b), "--device", "cpu", "-q", "--json", str(tmp_path / "d.json")]) == 0
    summary = json.loads((tmp_path / "d.json").read_text())["summary"]
    assert summary["nan_b"] == 1 and summary["inf_b"] == 1 and summary["changed_nonfinite"] == 2
    out = capsys.readouterr().out.splitlines()
    assert "NaN / Inf" in "\n".join(out)
    caution = next(i for i, line in enumerate(out) if line.startswith("CAUTION: 1 tensors hold NaN/Inf"))
    assert "model.norm.weight (NaN/Inf: A 0/0, B 1/1)" in out[caution]
    assert caution < next(i for i, line in enumerate(out) if line.startswith("bitwise sparsity"))


def test_nan_under_strict_is_one_line_naming_file_and_tensor_exit_2(tmp_path, capsys):
    base, tuned = _base_and_tuned()
    tuned["model.layers.0.self_attn.q_proj.weight"][0, 1] = float("nan")
    a, b = write_safetensors(tmp_path / "a", base), write_safetensors(tmp_path / "b", tuned)
    out = tmp_path / "d.json"
    err = _error_line(capsys, ["diff", str(a), str(b), "--device", "cpu", "-q", "--strict", "--json", str(out)])
    assert "b/model.safetensors: tensor model.layers.0.self_attn.q_proj.weight: 1 NaN and 0 Inf" in err
    assert not out.exists()


def test_shape_mismatch_is_said_at_the_top_of_the_summary(tmp_path, capsys):
    base, tuned = _base_and_tuned()
    tuned["model.layers.0.mlp.down_proj.weight"] = torch.zeros(16, 20)
    a, b = write_safetensors(tmp_path / "a", base), write_safetensors(tmp_path / "b", tuned)
    assert main(["diff", str(a), str(b), "--device", "cpu", "-q"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[3] == ("CAUTION: 1 tensors differ in shape and are not in these numbers: "
                      "model.layers.0.mlp.down_proj.weight [16, 24] vs [16, 20]")


def _error_line(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    return err


def test_nonexistent_path_is_one_line_exit_2(pair, capsys, tmp_path):
    a, _ = pair
    err = _error_line(capsys, ["diff", str(a), str(tmp_path / "nope"), "-q"])
    assert "nope" in err


def test_folder_without_weights_is_one_line_exit_2(pair, capsys, tmp_path):
    a, _ = pair
    (tmp_path / "empty").mkdir()
    assert "no weights" in _error_line(capsys, ["diff", str(a), str(tmp_path / "empty"), "-q"])


def test_truncated_safetensors_names_the_file(pair, capsys, tmp_path):
    a, b = pair
    file = b / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) - 100])
    out = tmp_path / "d.json"
    assert "model.safetensors" in _error_line(capsys, ["diff", str(a), str(b), "-q", "--json", str(out)])
    assert not out.exists()


def test_corrupt_header_names_the_file(pair, capsys):
    a, b = pair
    file = b / "model.safetensors"
    data = bytearray(file.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    data[8:8 + n] = b"{" * n
    file.write_bytes(bytes(data))
    assert "model.safetensors" in _error_line(capsys, ["diff", str(a), str(b), "-q"])


def test_index_naming_missing_shard_names_it(tmp_path, capsys):
    base, tuned = _base_and_tuned()
    a = write_safetensors(tmp_path / "a", base)
    b = write_safetensors(tmp_path / "b", tuned, shards=2)
    (b / "model-00002-of-00002.safetensors").unlink()
    assert "model-00002-of-00002.safetensors" in _error_line(capsys, ["diff", str(a), str(b), "-q"])


def test_bin_needing_pickle_is_refused(tmp_path, capsys, pair):
    a, _ = pair
    b = tmp_path / "evil"
    b.mkdir()
    torch.save({"w": torch.zeros(2), "extra": Fraction(1, 3)}, b / "pytorch_model.bin")
    assert "refused" in _error_line(capsys, ["diff", str(a), str(b), "-q"])


def test_strict_mismatch_is_exit_2(tmp_path, capsys):
    base, tuned = _base_and_tuned()
    tuned["model.norm.weight"] = tuned["model.norm.weight"].float()
    a, b = write_safetensors(tmp_path / "a", base), write_safetensors(tmp_path / "b", tuned)
    assert "model.norm.weight" in _error_line(capsys, ["diff", str(a), str(b), "-q", "--strict"])
    assert main(["diff", str(a), str(b), "-q", "--device", "cpu"]) == 0


def test_adapter_with_missing_base_tensor_is_exit_2(tmp_path, capsys, pair):
    a, _ = pair
    adapter = write_lora_adapter(tmp_path / "adapter", lora_pair("model.layers.7.mlp.up_proj", 16, 16, r=2),
                                 r=2, lora_alpha=4)
    assert "up_proj" in _error_line(capsys, ["diff", str(a), str(adapter), "-q"])


def test_zero_size_tensor_is_compared(pair):
    result = diff(*pair, device="cpu")
    empty = _rows(result)["model.empty"]
    assert empty.numel == 0 and empty.changed == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_pipeline_gives_the_cpu_numbers(tmp_path):
    base, tuned = _base_and_tuned()
    a, b = write_safetensors(tmp_path / "a", base, shards=2), write_bin(tmp_path / "b", tuned)
    on_cpu, on_gpu = _rows(diff(a, b, device="cpu")), _rows(diff(a, b, device="cuda", save_masks=True))
    assert on_cpu.keys() == on_gpu.keys()
    for name, cpu in on_cpu.items():
        gpu = on_gpu[name]
        for field in ("changed", "ulp_histogram", "within_abs", "within_rel", "hidden_by_bf16", "unchanged_rows",
                      "unchanged_cols", "max_abs_delta", "nan_b"):
            assert getattr(gpu, field) == getattr(cpu, field), (name, field)
        assert gpu.sum_sq_delta == pytest.approx(cpu.sum_sq_delta, rel=1e-6)


def test_geometry_adds_rows_aggregates_skips_and_singular_values(pair, tmp_path):
    a, b = pair
    assert main(["diff", str(a), str(b), "--device", "cpu", "-q", "--geometry", "--rank-k", "20",
                 "--json", str(tmp_path / "d.json"), "--h5", str(tmp_path / "d.h5")]) == 0
    doc = json.loads((tmp_path / "d.json").read_text())
    rows = {r["name"]: r for r in doc["tensors"]}
    q = rows["model.layers.0.self_attn.q_proj.weight"]["geometry"]
    assert q["k"] == 16 and q["k_clamped"]  # 16×16 matrix: k = 20 clamped and said
    assert "geometry" not in rows["model.norm.weight"]
    skipped = {s["name"]: s["reason"] for s in doc["geometry"]["skipped"]}
    assert skipped["model.norm.weight"] == "not 2-D"
    assert doc["geometry"]["summary"]["matrices"] == 3  # embed, q, down (the 0×4 tensor is skipped)
    assert set(doc["geometry"]["by_module_kind"]) >= {"q", "down", "embed"}
    import h5py
    with h5py.File(tmp_path / "d.h5") as f:
        assert f["singular_values/model.layers.0.self_attn.q_proj.weight/a"].shape == (16,)


@pytest.mark.parametrize("kind, page", [("sparsity", "sparsity.html"), ("three-gate", "three-gate.html")])
def test_report_command_renders_from_checkpoints_and_from_json(pair, tmp_path, capsys, kind, page):
    a, b = pair
    assert main(["report", kind, str(a), str(b), "-o", str(tmp_path / "r1"), "-q", "--device", "cpu",
                 "--rank-k", "4"]) == 0
    assert (tmp_path / "r1" / page).exists()
    assert main(["diff", str(a), str(b), "-q", "--device", "cpu", "--json", str(tmp_path / "d.json")]) == 0
    assert main(["report", kind, str(tmp_path / "d.json"), "-o", str(tmp_path / "r2")]) == 0
    assert (tmp_path / "r2" / page).exists()


def test_report_of_a_missing_json_is_exit_2(tmp_path, capsys):
    assert "nope.json" in _error_line(capsys, ["report", "sparsity", str(tmp_path / "nope.json"), "-o", str(tmp_path)])
