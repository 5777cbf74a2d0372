"""extract-lora: full rank reproduces Δ, rank r keeps exactly the reported energy, peft loads and merges it."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import Qwen2ForCausalLM

from dynamics.cli import main
from dynamics.lora_extract import UpdateSpectrum, adapter_capacity, extract_lora, update_spectrum
from tests.tiny_lm import tiny_config

Q0 = "model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A tiny Qwen2 and a copy whose projections moved by a rank-3 part plus small full-rank noise."""
    root = tmp_path_factory.mktemp("lora")
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(tiny_config(64))
    model.save_pretrained(root / "base")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "proj" in name:
                m, n = p.shape
                p += 1e-2 * torch.randn(m, 3, generator=g) @ torch.randn(3, n, generator=g) / 3
                p += 1e-4 * torch.randn(m, n, generator=g)
    model.save_pretrained(root / "tuned")
    return root / "base", root / "tuned"


def _deltas(base, tuned) -> dict[str, torch.Tensor]:
    a, b = load_file(str(base / "model.safetensors")), load_file(str(tuned / "model.safetensors"))
    return {name.removesuffix(".weight"): b[name].double() - a[name].double()
            for name in a if a[name].dim() == 2 and "proj" in name}


def _adapter_products(folder) -> dict[str, torch.Tensor]:
    t = load_file(str(folder / "adapter_model.safetensors"))
    modules = {k.removeprefix("base_model.model.").rsplit(".lora_", 1)[0] for k in t}
    return {m: t[f"base_model.model.{m}.lora_B.weight"].double() @ t[f"base_model.model.{m}.lora_A.weight"].double()
            for m in modules}


def test_full_rank_reproduces_delta(pair, tmp_path):
    extraction = extract_lora(*pair, tmp_path / "full", rank=1000)
    deltas, products = _deltas(*pair), _adapter_products(tmp_path / "full")
    assert products.keys() == deltas.keys()
    for module, delta in deltas.items():
        assert (products[module] - delta).abs().max() <= 1e-6 * delta.abs().max(), module  # float32 A, B
    assert all(m.energy_kept == pytest.approx(1.0) for m in extraction.modules)


def test_rank_r_keeps_exactly_the_reported_energy(pair, tmp_path):
    extraction = extract_lora(*pair, tmp_path / "r2", rank=2)
    deltas, products = _deltas(*pair), _adapter_products(tmp_path / "r2")
    for m in extraction.modules:
        delta, product = deltas[m.module], products[m.module]
        total = delta.square().sum()
        assert m.rank == 2 and product.shape == delta.shape
        assert float(product.square().sum() / total) == pytest.approx(m.energy_kept, rel=1e-6)
        assert float((delta - product).square().sum() / total) == pytest.approx(1 - m.energy_kept, rel=1e-4)
        assert m.rank_for_energy["0.9"] <= 3 <= m.rank_for_energy["0.99"]  # a rank-3 signal over noise
    assert 0.5 < extraction.energy_kept < 1.0


def test_peft_loads_the_adapter_and_merge_and_unload_matches(pair, tmp_path):
    from peft import PeftModel  # imported here: peft pulls in deepspeed, which other tests check stays unloaded
    base, tuned = pair
    extraction = extract_lora(base, tuned, tmp_path / "e90", energy=0.6)
    ranks = {m.module: m.rank for m in extraction.modules}
    assert len(set(ranks.values())) > 1  # per-module ranks travel as rank_pattern / alpha_pattern
    merged = PeftModel.from_pretrained(Qwen2ForCausalLM.from_pretrained(base), tmp_path / "e90").merge_and_unload()
    reference = load_file(str(base / "model.safetensors"))
    products = _adapter_products(tmp_path / "e90")
    for name, weight in merged.state_dict().items():
        expected = reference[name].double()
        module = name.removesuffix(".weight")
        if module in products:
            expected = expected + products[module]
            assert products[module].shape == weight.shape
        assert torch.allclose(weight.double(), expected, atol=1e-6), name
    loaded = PeftModel.from_pretrained(Qwen2ForCausalLM.from_pretrained(base), tmp_path / "e90")
    params = dict(loaded.named_parameters())
    assert all(params[f"base_model.model.{m}.lora_A.default.weight"].shape[0] == r for m, r in ranks.items())


def test_capacity_of_a_hand_spectrum_and_the_model():
    spectrum = update_spectrum("w", torch.diag(torch.tensor([3.0, 2.0, 1.0])))
    assert spectrum.energy(1) == pytest.approx(9 / 14) and spectrum.energy(2) == pytest.approx(13 / 14)
    assert spectrum.rank_for(0.9) == 2 and spectrum.rank_for(0.99) == 3
    zero = UpdateSpectrum("z", (2, 2), (0.0, 0.0), 0.0)
    assert zero.energy(1) is None and zero.rank_for(0.9) is None


def test_adapter_capacity_and_cli(pair, tmp_path, capsys):
    capacity = adapter_capacity(*pair)
    assert len(capacity.modules) == 2 * 7
    assert capacity.overall_energy(3) > 0.9 and capacity.overall_energy(1000) == pytest.approx(1.0)
    out = tmp_path / "cli"
    assert main(["extract-lora", *map(str, pair), "--rank", "4", "-o", str(out), "--json", str(tmp_path / "x.json")]) == 0
    assert "energy kept over all 14 modules" in capsys.readouterr().out
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and Q0 in config["target_modules"]
    assert main(["extract-lora", *map(str, pair), "--rank", "0", "-o", str(out)]) == 2
