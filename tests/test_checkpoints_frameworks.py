"""Training frameworks' checkpoint layouts read number for number: DeepSpeed ZeRO-1/2/3 (real files
written by DeepSpeed 0.19.8, tests/fixtures_scripts/write_deepspeed_fixtures.py), verl FSDP2 DTensor
shards and torch DCP (written live by two gloo processes), accelerate and Megatron DCP layouts; bad
layouts and files without model tensors fail with one line; mixed precision is compared in fp32."""

from __future__ import annotations

import pickle
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file

from dynamics import diff
from dynamics.checkpoints import open_checkpoint
from dynamics.checkpoints.steps import step_of_folder
from dynamics.cli import main
from dynamics.errors import CheckpointError
from dynamics.metrics import bitwise_sparsity, relative_update_norm
from tests.checkpoint_factory import write_config, write_safetensors, write_torch_file
from tests.framework_writers import CONFIG, tiny_models, write_fsdp2_run
from tests.memory_checkpoint import memory_checkpoint

DEEPSPEED = Path(__file__).parent / "fixtures" / "deepspeed"
FROZEN = "model.norm.weight"


def assert_reads(ckpt, expected: dict[str, torch.Tensor]) -> None:
    assert set(ckpt.tensors) == set(expected)
    for name, tensor in expected.items():
        assert (ckpt.tensors[name].dtype, ckpt.tensors[name].shape) == (tensor.dtype, tuple(tensor.shape)), name
        assert torch.equal(ckpt.read(name), tensor), name


def one_line_error(capsys, *argv: str) -> str:
    assert main(["diff", *argv, "--device", "cpu", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("dynamics: error: ")
    return err


# --- DeepSpeed ZeRO (real files) ------------------------------------------------------------------

@pytest.mark.parametrize("stage", [1, 2, 3])
def test_deepspeed_masters_equal_zero_to_fp32_number_for_number(stage, monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # any `import deepspeed` while reading would fail
    ckpt = open_checkpoint(DEEPSPEED / f"zero{stage}", masters=True)
    expected = load_file(DEEPSPEED / f"zero{stage}" / "expected_fp32.safetensors")
    if stage == 1:  # ZeRO-1 records no frozen parameters; zero_to_fp32 leaves them out, we read the stored one
        expected[FROZEN] = load_file(DEEPSPEED / "zero1" / "expected_16bit.safetensors")[FROZEN]
    assert_reads(ckpt, expected)
    assert ckpt.tied == {"lm_head.weight": "model.embed_tokens.weight"}
    assert any("fp32 master weights" in note for note in ckpt.notes)
    assert any(FROZEN in note and "no fp32 master" in note for note in ckpt.notes)


@pytest.mark.parametrize("stage", [1, 2])
def test_deepspeed_default_is_the_stored_16bit_weights_which_the_masters_round_to(stage):
    stored = open_checkpoint(DEEPSPEED / f"zero{stage}")
    assert_reads(stored, load_file(DEEPSPEED / f"zero{stage}" / "expected_16bit.safetensors"))
    assert any("stored bfloat16 weights" in note and "masters=True" in note for note in stored.notes)
    masters = open_checkpoint(DEEPSPEED / f"zero{stage}" / "global_step3", masters=True)
    for name in stored.tensors:
        assert torch.equal(masters.read(name).bfloat16(), stored.read(name)), name


def test_deepspeed_zero3_stores_no_16bit_weights_so_the_masters_are_read_and_said_so():
    ckpt = open_checkpoint(DEEPSPEED / "zero3")
    assert ckpt.tensors["model.embed_tokens.weight"].dtype == torch.float32
    assert any("ZeRO-3 model states hold placeholders" in note for note in ckpt.notes)


def test_bf16_base_against_fp32_masters_is_compared_in_fp32_like_the_safetensors_export():
    base = DEEPSPEED / "base"
    from_masters = diff(base, DEEPSPEED / "zero2", masters=True, device="cpu")
    from_export = diff(base, DEEPSPEED / "zero2" / "expected_fp32.safetensors", device="cpu")
    stored = diff(base, DEEPSPEED / "zero2", device="cpu")
    assert [(r.name, r.dtype, r.stats) for r in from_masters.records] == [
        (r.name, r.dtype, r.stats) for r in from_export.records]
    embed = next(r for r in from_masters.records if r.name == "model.embed_tokens.weight")
    assert embed.dtype == "float32" and embed.stats.hidden_by_bf16 is not None
    assert from_masters.summary().changed > stored.summary().changed  # fp32 movement bf16 storage hides


def test_hf_trainer_deepspeed_checkpoint_gives_model_safetensors_or_with_masters_the_zero_folder(tmp_path):
    folder = shutil.copytree(DEEPSPEED / "zero2", tmp_path / "checkpoint-3")
    shutil.copy(folder / "expected_16bit.safetensors", folder / "model.safetensors")
    (folder / "expected_fp32.safetensors").unlink()
    assert open_checkpoint(folder).format.startswith("safetensors")
    masters = open_checkpoint(folder, masters=True)
    assert "using global_step3 named by checkpoint-3/latest" in masters.notes
    assert masters.tensors["model.embed_tokens.weight"].dtype == torch.float32


def test_deepspeed_missing_rank_file_is_one_line(tmp_path, capsys):
    folder = shutil.copytree(DEEPSPEED / "zero3", tmp_path / "zero3")
    (folder / "global_step3" / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    with pytest.raises(CheckpointError, match="optimizer-state file of rank 1 is missing"):
        open_checkpoint(folder)
    one_line_error(capsys, str(DEEPSPEED / "base"), str(folder))


@pytest.mark.parametrize("file, says", [
    ("zero2/global_step3/bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", "optimizer states"),
    ("zero3/global_step3/zero_pp_rank_1_mp_rank_00_model_states.pt", "placeholders"),
])
def test_a_deepspeed_file_without_model_weights_is_one_line_naming_it(capsys, file, says):
    err = one_line_error(capsys, str(DEEPSPEED / "base"), str(DEEPSPEED / file))
    assert file.split("/")[-1] in err and says in err


def test_truncated_deepspeed_optimizer_file_is_one_line(tmp_path, capsys):
    folder = shutil.copytree(DEEPSPEED / "zero2", tmp_path / "zero2")
    optim = folder / "global_step3" / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"
    optim.write_bytes(optim.read_bytes()[:4000])
    err = one_line_error(capsys, str(DEEPSPEED / "base"), str(folder), "--masters")
    assert optim.name in err


# --- verl FSDP2 (two gloo processes) --------------------------------------------------------------

@pytest.fixture(scope="module")
def verl_run(tmp_path_factory):
    root = write_fsdp2_run(tmp_path_factory.mktemp("verl") / "ckpts")
    actor = tiny_models()["actor"].state_dict()
    base = write_safetensors(root.parent / "base", {k: v for k, v in actor.items() if k != "lm_head.weight"})
    write_config(base, **CONFIG)
    return root


def _expected(root: Path, step: int, component: str) -> dict[str, torch.Tensor]:
    return load_file(root / f"expected_step{step}_{component}.safetensors")


def test_verl_step_folder_is_its_actor_reassembled_number_for_number(verl_run):
    ckpt = open_checkpoint(verl_run / "global_step_2")
    assert_reads(ckpt, _expected(verl_run, 2, "actor"))
    assert ckpt.tied == {"lm_head.weight": "model.embed_tokens.weight"}  # config from actor/huggingface/
    assert any("verl component actor; also critic" in note for note in ckpt.notes)


def test_verl_component_picks_the_critic_and_an_unknown_one_is_an_error(verl_run):
    assert_reads(open_checkpoint(verl_run / "global_step_1", component="critic"), _expected(verl_run, 1, "critic"))
    with pytest.raises(CheckpointError, match="no verl component 'reward' .has actor, critic."):
        open_checkpoint(verl_run / "global_step_1", component="reward")


def test_fsdp2_dcp_save_of_two_ranks_reads_like_the_full_tensors(verl_run):
    expected = _expected(verl_run, 2, "actor")
    ckpt = open_checkpoint(verl_run / "dcp_sharded")
    for name, tensor in expected.items():
        assert torch.equal(ckpt.read(name), tensor), name


def test_series_over_a_verl_run_diffs_the_actors(verl_run, tmp_path):
    from dynamics.series import series

    result = series(verl_run, base=verl_run.parent / "base", out=tmp_path / "series", device="cpu")
    assert [s.step for s in result.steps] == [1, 2]
    step2 = diff(verl_run / "global_step_1", verl_run / "global_step_2", device="cpu")
    assert result.steps[1].vs_previous["changed"] == step2.summary().changed > 0


def test_a_lone_verl_rank_file_is_one_line(verl_run, capsys):
    shard = verl_run / "global_step_1" / "actor" / "model_world_size_2_rank_0.pt"
    err = one_line_error(capsys, str(verl_run.parent / "base"), str(shard))
    assert shard.name in err and "one rank's DTensor shard" in err


def test_verl_missing_rank_file_is_one_line(verl_run, tmp_path, capsys):
    actor = shutil.copytree(verl_run / "global_step_1" / "actor", tmp_path / "actor")
    (actor / "model_world_size_2_rank_1.pt").unlink()
    err = one_line_error(capsys, str(verl_run.parent / "base"), str(actor))
    assert "model_world_size_2_rank_1.pt is missing" in err


def _tampered_copy(verl_run: Path, tmp_path: Path, change) -> Path:
    import torch.distributed.tensor

    actor = shutil.copytree(verl_run / "global_step_1" / "actor", tmp_path / "actor")
    shard = actor / "model_world_size_2_rank_1.pt"
    state = torch.load(shard, weights_only=True)
    change(state["model.layers.0.mlp.up_proj.weight"])
    torch.save(state, shard)
    return actor


def test_verl_shard_of_the_wrong_shape_is_one_line(verl_run, tmp_path, capsys):
    def shrink(t):
        t._local_tensor = torch.zeros(3, 9)

    actor = _tampered_copy(verl_run, tmp_path, shrink)
    err = one_line_error(capsys, str(verl_run.parent / "base"), str(actor))
    assert "model_world_size_2_rank_1.pt: tensor model.layers.0.mlp.up_proj.weight: shard of shape [3, 9]" in err


def test_verl_strided_shard_placement_is_refused_clearly(verl_run, tmp_path):
    from torch.distributed.tensor.placement_types import _StridedShard

    def stride(t):
        t._spec = replace(t._spec, placements=(_StridedShard(0, split_factor=2),))

    actor = _tampered_copy(verl_run, tmp_path, stride)
    (actor / "model_world_size_2_rank_0.pt").write_bytes((actor / "model_world_size_2_rank_1.pt").read_bytes())
    with pytest.raises(CheckpointError, match=r"placement _StridedShard.* is not supported"):
        open_checkpoint(actor)


# --- torch DCP: accelerate and Megatron layouts ---------------------------------------------------

def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"model.layers.0.mlp.up_proj.weight": torch.randn(6, 4, generator=g),
            "model.norm.weight": torch.randn(4, generator=g).bfloat16()}


def _accelerate_checkpoint(folder: Path) -> dict[str, torch.Tensor]:
    """checkpoint-5/ as accelerate's FSDP SHARDED_STATE_DICT saves it: {"model": ...} and the optimizer apart."""
    weights = _weights()
    dcp.save({"model": weights}, checkpoint_id=str(folder / "pytorch_model_fsdp_0"), no_dist=True)
    optim = {"state": {0: {"exp_avg": torch.ones(6, 4)}}, "param_groups": [{"lr": 1e-6, "params": [0]}]}
    dcp.save({"optimizer": optim}, checkpoint_id=str(folder / "optimizer_0"), no_dist=True)
    return weights


def test_accelerate_fsdp_checkpoint_reads_the_nested_model_state_dict(tmp_path):
    weights = _accelerate_checkpoint(tmp_path / "checkpoint-5")
    ckpt = open_checkpoint(tmp_path / "checkpoint-5")
    assert_reads(ckpt, weights)
    assert "using subfolder pytorch_model_fsdp_0" in ckpt.notes
    assert "using the state dict nested under 'model'" in ckpt.notes


def test_truncated_distcp_is_one_line_naming_the_file(tmp_path, capsys):
    _accelerate_checkpoint(tmp_path / "checkpoint-5")
    data = tmp_path / "checkpoint-5" / "pytorch_model_fsdp_0" / "__0_0.distcp"
    data.write_bytes(data.read_bytes()[:100])
    err = one_line_error(capsys, str(tmp_path / "checkpoint-5"), str(tmp_path / "checkpoint-5"))
    assert "__0_0.distcp" in err and "truncated" in err


def test_dcp_metadata_is_never_unpickled_beyond_its_dataclasses(tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / ".metadata").write_bytes(pickle.dumps(print))
    with pytest.raises(CheckpointError, match="builtins.print is not a DCP metadata class"):
        open_checkpoint(folder)


def test_megatron_torch_dist_reads_model_weights_or_fp32_masters(tmp_path):
    iteration = tmp_path / "run" / "iter_0000010"
    bf16 = {"decoder.layers.mlp.linear_fc1.weight": torch.randn(2, 6, 4).bfloat16()}
    fp32 = {"optimizer.state.fp32_param.decoder.layers.mlp.linear_fc1.weight": torch.randn(2, 6, 4),
            "optimizer.state.exp_avg.decoder.layers.mlp.linear_fc1.weight": torch.zeros(2, 6, 4)}
    dcp.save({**bf16, **fp32}, checkpoint_id=str(iteration), no_dist=True)
    write_torch_file(iteration / "common.pt", {"checkpoint_version": 3.0})
    (tmp_path / "run" / "latest_checkpointed_iteration.txt").write_text("10")
    assert_reads(open_checkpoint(tmp_path / "run"), bf16)
    masters = open_checkpoint(iteration, masters=True)
    assert torch.equal(masters.read("decoder.layers.mlp.linear_fc1.weight"),
                       fp32["optimizer.state.fp32_param.decoder.layers.mlp.linear_fc1.weight"])


# --- files that hold no model tensors --------------------------------------------------------------

def test_an_optimizer_pt_is_one_line_saying_what_it_holds(tmp_path, capsys):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    file = write_torch_file(tmp_path / "checkpoint-2" / "optimizer.pt", optimizer.state_dict())
    err = one_line_error(capsys, str(file), str(file))
    assert "optimizer.pt: holds an optimizer state" in err


def test_a_file_of_placeholders_is_an_error(tmp_path):
    file = write_torch_file(tmp_path / "w.pt", {"module": {"a.weight": torch.zeros(0), "b.weight": torch.zeros(0)}})
    with pytest.raises(CheckpointError, match="only empty placeholder tensors"):
        open_checkpoint(file)


# --- step folders, LoRA series ---------------------------------------------------------------------

@pytest.mark.parametrize("name, step", [
    ("checkpoint-500", 500), ("global_step_12", 12), ("global_step4", 4), ("iter_0000100", 100), ("step_3", 3),
    ("checkpoint", None), ("iter_x", None), ("global_steps_3", None), ("run-3", None),
])
def test_step_folder_names(name, step):
    assert step_of_folder(name) == step


def test_lora_run_series_merges_every_step_and_both_sides_of_vs_previous_on_the_base(tmp_path):
    from dynamics.series import series
    from tests.checkpoint_factory import lora_pair, write_lora_adapter

    module = "model.layers.0.self_attn.q_proj"
    base = write_safetensors(tmp_path / "base", {f"{module}.weight": torch.randn(6, 5),
                                                 "model.norm.weight": torch.ones(5)})
    for step in (1, 2):
        write_lora_adapter(tmp_path / "run" / f"checkpoint-{step}", lora_pair(module, 6, 5, r=2, seed=step), r=2)
    result = series(tmp_path / "run", base=base, out=tmp_path / "out", device="cpu")
    two_merged = diff(open_checkpoint(tmp_path / "run" / "checkpoint-1", base=open_checkpoint(base)),
                      open_checkpoint(tmp_path / "run" / "checkpoint-2", base=open_checkpoint(base)), device="cpu")
    assert result.steps[1].vs_previous["changed"] == two_merged.summary().changed == 30
    assert result.steps[1].vs_previous["relative_update_norm"] == relative_update_norm(two_merged.summary())


# --- mixed precision: a bf16 base against fp32 weights --------------------------------------------

def test_bf16_base_against_fp32_is_compared_in_fp32_hand_computed():
    """W0 exact in bf16. Changed in fp32: (0,2) −1 → −1−2⁻²³ (1 fp32 ULP), (1,1) 1 → 1+2⁻⁷ (2¹⁶ ULPs,
    the only change bf16 storage shows), (1,2) 1 → 1+2⁻²³ (1 ULP), (2,3) 3 → 3+2⁻¹⁰ (2¹² ULPs):
    4 of 12 moved, 3 of them below half a bf16 ULP (hidden); column 0 alone is unchanged."""
    w0 = torch.tensor([[1.0, 2.0, -1.0, 0.5], [4.0, 1.0, 1.0, 1.0], [-2.0, 0.25, 1.0, 3.0]])
    w1 = w0.clone()
    w1[0, 2] = -1 - 2**-23
    w1[1, 1] = 1 + 2**-7
    w1[1, 2] = 1 + 2**-23
    w1[2, 3] = 3 + 2**-10
    result = diff(memory_checkpoint({"w": w0.bfloat16()}, "A"), memory_checkpoint({"w": w1}, "B"), device="cpu")
    (record,) = result.records
    stats = record.stats
    assert record.dtype == "float32"
    assert (stats.changed, stats.moved, stats.hidden_by_bf16) == (4, 4, 3)
    assert stats.ulp_histogram[0] == 2 and sum(stats.ulp_histogram) == 4
    assert stats.sum_sq_delta == 2 * 2.0**-46 + 2.0**-14 + 2.0**-20
    assert stats.max_abs_delta == 2**-7
    assert (stats.unchanged_rows, stats.unchanged_cols) == (0, 1)
    assert bitwise_sparsity(result.summary()) == 1 - 4 / 12
    assert result.unpaired.dtype_mismatch == [{"name": "w", "dtype_a": "bfloat16", "dtype_b": "float32",
                                               "compared_as": "float32"}]


def test_reports_do_not_count_upcast_pairs_as_left_out():
    from reports.sections import subtitle, unpaired_blocks

    w = torch.ones(2, 2)
    result = diff(memory_checkpoint({"w": w.bfloat16()}, "A"), memory_checkpoint({"w": w + 2**-20}, "B"),
                  device="cpu")
    texts = [block.text for block in unpaired_blocks(result)]
    assert texts and not any(text.startswith("Not in these numbers") for text in texts)
    assert "compared as float32" in texts[0] and "compared in float32" in subtitle(result)[2]


# --- adapters on a tied-embedding base (real peft) ------------------------------------------------

@pytest.mark.parametrize("kind", ["lora_on_lm_head", "modules_to_save_lm_head"])
def test_adapter_on_a_tied_lm_head_merges_as_peft_merge_and_unload(tmp_path, kind):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(**CONFIG)).save_pretrained(tmp_path / "base")  # lm_head not stored: tied
    options = ({"target_modules": ["lm_head", "q_proj"]} if kind == "lora_on_lm_head"
               else {"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]})
    model = get_peft_model(Qwen2ForCausalLM.from_pretrained(tmp_path / "base"),
                           LoraConfig(r=2, lora_alpha=4, init_lora_weights=False, **options))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "modules_to_save" in name:
                p.add_(0.1)
    model.save_pretrained(tmp_path / "adapter")
    merged = PeftModel.from_pretrained(Qwen2ForCausalLM.from_pretrained(tmp_path / "base"),
                                       tmp_path / "adapter").merge_and_unload().state_dict()
    ckpt = open_checkpoint(tmp_path / "adapter", base=open_checkpoint(tmp_path / "base"))
    for name in ckpt.tensors:
        assert torch.equal(ckpt.read(name), merged[name]), name
    if kind == "lora_on_lm_head":  # peft merges into the shared weight: the embedding moves, the head stays tied
        assert ckpt.tied == {"lm_head.weight": "model.embed_tokens.weight"}
        assert any("merged into model.embed_tokens.weight" in note for note in ckpt.notes)
    else:  # modules_to_save gives the head its own copy: untied, and compared against the base's embedding
        assert "lm_head.weight" in ckpt.tensors and any("untied lm_head.weight" in note for note in ckpt.notes)
        result = diff(tmp_path / "base", tmp_path / "adapter", device="cpu")
        assert "lm_head.weight" in {r.name for r in result.records} and not result.unpaired.only_b


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dora_merge_matches_peft_merge_and_unload(tmp_path, dtype):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(**CONFIG)).to(dtype).save_pretrained(tmp_path / "base")
    model = get_peft_model(Qwen2ForCausalLM.from_pretrained(tmp_path / "base", dtype=dtype),
                           LoraConfig(r=2, lora_alpha=4, use_dora=True, init_lora_weights=False,
                                      target_modules=["q_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(1.5)  # a trained magnitude, not the initial ‖W‖
    model.save_pretrained(tmp_path / "adapter")
    merged = PeftModel.from_pretrained(Qwen2ForCausalLM.from_pretrained(tmp_path / "base", dtype=dtype),
                                       tmp_path / "adapter").merge_and_unload().state_dict()
    ckpt = open_checkpoint(tmp_path / "adapter", base=open_checkpoint(tmp_path / "base"))
    assert ckpt.format.startswith("PEFT DoRA adapter")
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight"):
        ours, theirs = ckpt.read(name), merged[name]
        assert ours.dtype == theirs.dtype == dtype
        if dtype == torch.float32:
            assert torch.equal(ours, theirs), name
        else:  # peft rounds W + Δ to bf16 before the norm; we keep it in fp32: at most one bf16 ULP apart
            torch.testing.assert_close(ours.float(), theirs.float(), rtol=2**-7, atol=0)
