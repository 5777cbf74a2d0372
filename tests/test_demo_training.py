"""The demo checkpoints: loadable bf16 HF folders, a trained base, RL sparser than SFT."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, Qwen2ForCausalLM

from dynamics.demo_training import (
    VOCAB_SIZE,
    answer_loss,
    correct_answers,
    demo_model_config,
    make_demo_checkpoints,
    sample_prompts,
    save_checkpoint,
)


@pytest.fixture(scope="module")
def demo_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_demo_checkpoints(tmp_path_factory.mktemp("demo"), seed=0, progress=False)


def unchanged_bits_fraction(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Share of elements whose stored bf16 bits are identical, over all tensors."""
    equal = sum((a[name].view(torch.int16) == b[name].view(torch.int16)).sum().item() for name in a)
    return equal / sum(tensor.numel() for tensor in a.values())


def test_folders_load_as_bf16_and_fp32_qwen2_models(demo_folders: dict[str, Path]) -> None:
    assert sorted(demo_folders) == ["base", "base_fp32", "rl", "rl_fp32", "sft", "sft_fp32"]
    for name, folder in demo_folders.items():
        dtype = torch.float32 if name.endswith("fp32") else torch.bfloat16
        assert json.loads((folder / "config.json").read_text())["model_type"] == "qwen2"
        stored = load_file(folder / "model.safetensors")
        assert {tensor.dtype for tensor in stored.values()} == {dtype}
        # Untied: both ends of the model are separate tensors for the diff to see.
        assert "lm_head.weight" in stored and "model.embed_tokens.weight" in stored
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        assert model.dtype == dtype


def test_base_is_trained_well_below_uniform_loss(demo_folders: dict[str, Path]) -> None:
    model = AutoModelForCausalLM.from_pretrained(demo_folders["base"], dtype=torch.bfloat16)
    prompts = sample_prompts(256, torch.Generator().manual_seed(123))
    with torch.no_grad():
        loss = answer_loss(model, prompts, correct_answers(prompts)).item()
    assert loss < 0.25 * math.log(VOCAB_SIZE)


def test_rl_keeps_more_bf16_elements_bitwise_than_sft(demo_folders: dict[str, Path]) -> None:
    base, rl, sft = (load_file(demo_folders[name] / "model.safetensors") for name in ("base", "rl", "sft"))
    rl_unchanged = unchanged_bits_fraction(base, rl)
    sft_unchanged = unchanged_bits_fraction(base, sft)
    # RL moved some weights (it is not a copy), most kept their bits; SFT moved nearly all.
    assert 0.5 < rl_unchanged < 1.0
    assert sft_unchanged < 0.2
    assert rl_unchanged > sft_unchanged


def test_same_seed_gives_identical_files_and_leaves_caller_state(demo_folders: dict[str, Path], tmp_path: Path) -> None:
    rng_state = torch.random.get_rng_state()
    threads = torch.get_num_threads()
    again = make_demo_checkpoints(tmp_path, seed=0, progress=False)
    assert torch.equal(torch.random.get_rng_state(), rng_state)
    assert torch.get_num_threads() == threads
    for name, folder in demo_folders.items():
        for file_name in ("model.safetensors", "config.json"):
            assert (folder / file_name).read_bytes() == (again[name] / file_name).read_bytes()


def test_saving_bf16_leaves_the_float32_master_untouched(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(demo_model_config())
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    save_checkpoint(model, tmp_path / "copy", torch.bfloat16)
    after = model.state_dict()
    assert all(after[name].dtype == torch.float32 for name in before)
    assert all(torch.equal(after[name], before[name]) for name in before)
    assert (tmp_path / "copy" / "model.safetensors").is_file()
