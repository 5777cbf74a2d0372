"""Opening checkpoints: every format, broken files, folder detection, names, ties and LoRA merges."""

from __future__ import annotations

import json
import math
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dynamics.checkpoints import Checkpoint, normalise_pair, open_checkpoint
from dynamics.errors import CheckpointError
from tests.checkpoint_factory import (
    lora_pair,
    sample_tensors,
    write_bin,
    write_config,
    write_lora_adapter,
    write_safetensors,
    write_torch_file,
)

Q_MODULE = "model.layers.0.self_attn.q_proj"
EMBED_MODULE = "model.embed_tokens"
Q_PROJ = f"{Q_MODULE}.weight"
EMBED = f"{EMBED_MODULE}.weight"


def assert_holds(ckpt: Checkpoint, tensors: dict[str, torch.Tensor]) -> None:
    assert set(ckpt.tensors) == set(tensors)
    for name, expected in tensors.items():
        info = ckpt.tensors[name]
        assert (info.name, info.dtype, info.shape) == (name, expected.dtype, tuple(expected.shape))
        got = ckpt.read(name)
        assert got.dtype == expected.dtype and got.is_contiguous() and got.device.type == "cpu"
        assert torch.equal(got, expected), name


# --- every format -------------------------------------------------------------------------------

FORMATS = {
    "hf safetensors": lambda d, t: write_safetensors(d / "hf", t),
    "sharded safetensors": lambda d, t: write_safetensors(d / "hf", t, shards=3),
    "safetensors file": lambda d, t: write_safetensors(d / "hf", t) / "model.safetensors",
    "safetensors index file": lambda d, t: write_safetensors(d / "hf", t, shards=2) / "model.safetensors.index.json",
    "hf bin": lambda d, t: write_bin(d / "hf", t),
    "sharded bin": lambda d, t: write_bin(d / "hf", t, shards=2),
    "pt file": lambda d, t: write_torch_file(d / "weights.pt", t),
    "legacy pth file": lambda d, t: write_torch_file(d / "weights.pth", t, legacy=True),
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_opens_with_identical_names_shapes_dtypes_values(tmp_path, fmt):
    tensors = sample_tensors()
    ckpt = open_checkpoint(FORMATS[fmt](tmp_path, tensors))
    assert_holds(ckpt, tensors)


def test_sharded_safetensors_reads_like_the_single_file(tmp_path):
    tensors = sample_tensors()
    single = open_checkpoint(write_safetensors(tmp_path / "one", tensors))
    sharded = open_checkpoint(write_safetensors(tmp_path / "three", tensors, shards=3))
    assert "(3 shards)" in sharded.format and "shards" not in single.format
    assert {n: (i.dtype, i.shape) for n, i in single.tensors.items()} == {
        n: (i.dtype, i.shape) for n, i in sharded.tensors.items()
    }
    for name in single.tensors:
        assert torch.equal(single.read(name), sharded.read(name))
    assert len({info.file for info in sharded.tensors.values()}) == 3


def test_safetensors_locations_give_the_raw_bytes_of_each_tensor(tmp_path):
    tensors = sample_tensors()
    ckpt = open_checkpoint(write_safetensors(tmp_path / "hf", tensors, shards=2))
    assert set(ckpt.locations) == set(tensors)
    for name, (file, offset, nbytes) in ckpt.locations.items():
        with open(file, "rb") as f:
            f.seek(offset)
            raw = f.read(nbytes)
        assert nbytes == ckpt.tensors[name].nbytes
        assert raw == tensors[name].contiguous().view(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize("writer", [write_safetensors, write_bin])
def test_read_returns_a_copy_that_later_reads_do_not_see_modified(tmp_path, writer):
    ckpt = open_checkpoint(writer(tmp_path / "hf", sample_tensors()))
    ckpt.read(EMBED).add_(1.0)
    assert torch.equal(ckpt.read(EMBED), sample_tensors()[EMBED])


@pytest.mark.parametrize("writer", [write_safetensors, write_bin])
def test_zero_size_tensor_is_readable(tmp_path, writer):
    ckpt = open_checkpoint(writer(tmp_path / "hf", {"w": torch.ones(2, 3), "empty": torch.zeros(0, 4)}))
    assert ckpt.tensors["empty"].nbytes == 0
    assert ckpt.read("empty").shape == (0, 4)


def test_reading_an_unknown_name_names_the_checkpoint(tmp_path):
    ckpt = open_checkpoint(write_safetensors(tmp_path / "hf", sample_tensors()))
    with pytest.raises(CheckpointError, match=r"hf: no tensor named nope"):
        ckpt.read("nope")


def test_non_numeric_safetensors_are_skipped_with_a_note(tmp_path):
    save_file({"w": torch.ones(2), "mask": torch.ones(2, dtype=torch.bool)}, str(tmp_path / "m.safetensors"))
    ckpt = open_checkpoint(tmp_path / "m.safetensors")
    assert set(ckpt.tensors) == {"w"}
    assert any("mask (BOOL)" in note for note in ckpt.notes)


# --- torch pickles ------------------------------------------------------------------------------

def test_bin_is_loaded_memory_mapped_with_weights_only(tmp_path, monkeypatch):
    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    open_checkpoint(write_bin(tmp_path / "hf", sample_tensors()))
    legacy = open_checkpoint(write_torch_file(tmp_path / "old.pt", sample_tensors(), legacy=True))
    assert [(c["weights_only"], c["mmap"]) for c in calls] == [(True, True), (True, False)]
    assert any("legacy (non-zip)" in note for note in legacy.notes)


@pytest.mark.parametrize("key", ["state_dict", "model", "module"])
def test_nested_state_dict_is_unwrapped_with_a_note(tmp_path, key):
    tensors = sample_tensors()
    ckpt = open_checkpoint(write_torch_file(tmp_path / "ckpt.pt", {key: tensors, "epoch": 3, "optimizer": {}}))
    assert_holds(ckpt, tensors)
    assert any(f"nested under '{key}'" in note for note in ckpt.notes)


def test_non_tensor_entries_are_ignored_with_a_note(tmp_path):
    raw = {"w": torch.ones(3), "step": 7, "flag": torch.ones(2) > 0}
    ckpt = open_checkpoint(write_torch_file(tmp_path / "w.pt", raw))
    assert set(ckpt.tensors) == {"w"}
    assert any("ignored 2 non-tensor or non-numeric entries: step, flag" in note for note in ckpt.notes)


def test_parameters_in_a_pt_file_read_as_plain_tensors(tmp_path):
    ckpt = open_checkpoint(write_torch_file(tmp_path / "w.pt", {"w": torch.nn.Parameter(torch.ones(2, 2))}))
    w = ckpt.read("w")
    assert type(w) is torch.Tensor and not w.requires_grad


class MarkerPayload:
    """Unpickling this creates `marker`: proof that pickle code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("legacy", [False, True])
def test_bin_needing_pickle_is_refused_and_not_executed(tmp_path, legacy):
    live = tmp_path / "payload-is-live"
    pickle.loads(pickle.dumps(MarkerPayload(live)))
    assert live.exists()  # the payload does run when unpickled without guard

    marker = tmp_path / "executed"
    raw = {"w": torch.ones(2), "x": MarkerPayload(marker)}
    file = write_torch_file(tmp_path / "hf" / "pytorch_model.bin", raw, legacy)
    refused = r"pytorch_model\.bin: refused: needs pickle beyond tensors \(not executed\)"
    with pytest.raises(CheckpointError, match=refused):
        open_checkpoint(file.parent)
    assert not marker.exists()


def test_tensors_sharing_storage_in_a_bin_are_tied(tmp_path):
    embed = torch.randn(16, 8)
    ckpt = open_checkpoint(write_bin(tmp_path / "hf", {EMBED: embed, "lm_head.weight": embed, "rows": embed[2:]}))
    assert set(ckpt.tensors) == {EMBED, "rows"}
    assert ckpt.tied == {"lm_head.weight": EMBED}
    assert torch.equal(ckpt.read("rows"), embed[2:])


def test_corrupt_bin_names_the_file(tmp_path):
    file = write_torch_file(tmp_path / "w.pt", sample_tensors())
    file.write_bytes(file.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"w\.pt: cannot load"):
        open_checkpoint(file)


# --- broken safetensors -------------------------------------------------------------------------

def write_raw_safetensors(file: Path, header: dict | bytes, data: bytes) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    file.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return file


@pytest.mark.parametrize("cut", [4, 40, -1])
def test_truncated_safetensors_names_the_file(tmp_path, cut):
    folder = write_safetensors(tmp_path / "hf", sample_tensors())
    file = folder / "model.safetensors"
    file.write_bytes(file.read_bytes()[:cut])
    broken = r"model\.safetensors: .*(no header length|exceeds the file size|past the)"
    with pytest.raises(CheckpointError, match=broken):
        open_checkpoint(folder)


@pytest.mark.parametrize(
    "header, message",
    [
        (b"not json at all", "bad safetensors header"),
        (b"[1, 2]", "not a JSON object"),
        ({"w": {"dtype": "F32", "shape": [2]}}, "bad safetensors header entry"),
        ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, "do not hold shape"),
    ],
)
def test_bad_safetensors_header_names_the_file(tmp_path, header, message):
    file = write_raw_safetensors(tmp_path / "bad.safetensors", header, bytes(8))
    with pytest.raises(CheckpointError, match=rf"bad\.safetensors: .*{message}"):
        open_checkpoint(file)


def test_header_length_past_the_file_end_names_the_file(tmp_path):
    file = tmp_path / "bad.safetensors"
    file.write_bytes(struct.pack("<Q", 10**6) + b"{}")
    with pytest.raises(CheckpointError, match=r"bad\.safetensors: header length 1000000 exceeds"):
        open_checkpoint(file)


def test_data_offsets_past_the_file_end_name_file_and_tensor(tmp_path):
    header = {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    file = write_raw_safetensors(tmp_path / "short.safetensors", header, bytes(8))
    with pytest.raises(CheckpointError, match=r"short\.safetensors: w: data ends at byte 16, past the 8 data bytes"):
        open_checkpoint(file)


@pytest.mark.parametrize("writer", [write_safetensors, write_bin])
def test_index_naming_a_missing_shard_names_index_and_shard(tmp_path, writer):
    folder = writer(tmp_path / "hf", sample_tensors(), shards=2)
    missing = next(p for p in folder.iterdir() if "-00002-of-" in p.name)
    missing.unlink()
    with pytest.raises(CheckpointError, match=rf"index\.json: names shard {missing.name}, which does not exist"):
        open_checkpoint(folder)


# --- finding the weights ------------------------------------------------------------------------

def test_nonexistent_path_is_reported(tmp_path):
    with pytest.raises(CheckpointError, match=r"nowhere: no such file or directory"):
        open_checkpoint(tmp_path / "nowhere")


def test_folder_without_weights_says_what_was_looked_for(tmp_path):
    write_config(tmp_path / "run" / "logs")
    write_torch_file(tmp_path / "run" / "optimizer.pt", {"state": torch.ones(1)})
    looked_for = r"run: no weights found \(looked for model\.safetensors, .*adapter_config"
    with pytest.raises(CheckpointError, match=looked_for):
        open_checkpoint(tmp_path / "run")


@pytest.mark.parametrize("inner", ["checkpoint-100", "global_step_10/actor/huggingface"])
def test_trainer_folder_with_one_inner_hf_folder_uses_it_with_a_note(tmp_path, inner):
    tensors = sample_tensors()
    write_safetensors(tmp_path / "run" / inner, tensors)
    write_torch_file(tmp_path / "run" / "optimizer.pt", {"state": torch.ones(1)})
    ckpt = open_checkpoint(tmp_path / "run")
    assert_holds(ckpt, tensors)
    assert ckpt.notes[0] == f"using subfolder {inner}"


def test_weights_deeper_than_three_levels_are_not_searched(tmp_path):
    write_safetensors(tmp_path / "run" / "a" / "b" / "c" / "d", sample_tensors())
    with pytest.raises(CheckpointError, match="no weights found"):
        open_checkpoint(tmp_path / "run")


def test_trainer_folder_with_several_inner_folders_lists_them(tmp_path):
    write_safetensors(tmp_path / "run" / "checkpoint-100", sample_tensors())
    write_bin(tmp_path / "run" / "checkpoint-200", sample_tensors())
    listing = r"2 subfolders hold weights \(checkpoint-100, checkpoint-200\); pass one"
    with pytest.raises(CheckpointError, match=listing):
        open_checkpoint(tmp_path / "run")


def test_config_json_is_read_next_to_the_weights(tmp_path):
    folder = write_config(write_safetensors(tmp_path / "hf", sample_tensors()), model_type="qwen2", hidden_size=8)
    assert open_checkpoint(folder).config == {"model_type": "qwen2", "hidden_size": 8}


# --- names --------------------------------------------------------------------------------------

def test_wrapper_prefixes_are_stripped_with_a_count(tmp_path):
    raw = {
        "module._orig_mod.layer.weight": torch.ones(2),
        "_orig_mod.module.head.weight": torch.zeros(2),
        "plain": torch.ones(1),
    }
    ckpt = open_checkpoint(write_torch_file(tmp_path / "w.pt", raw))
    assert set(ckpt.tensors) == {"layer.weight", "head.weight", "plain"}
    assert ckpt.tensors["layer.weight"].name == "layer.weight"
    assert torch.equal(ckpt.read("head.weight"), torch.zeros(2))
    assert "stripped module./_orig_mod. prefixes from 2 tensor names" in ckpt.notes


def test_wrapper_prefix_collision_is_an_error(tmp_path):
    file = write_torch_file(tmp_path / "w.pt", {"module.w": torch.ones(2), "w": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="would both be named w"):
        open_checkpoint(file)


def test_normalise_pair_strips_model_prefix_from_the_side_that_has_it(tmp_path):
    tensors = sample_tensors()
    bare = {name.removeprefix("model."): t for name, t in tensors.items()}
    a = open_checkpoint(write_safetensors(tmp_path / "a", tensors))
    b = open_checkpoint(write_safetensors(tmp_path / "b", bare))
    normalise_pair(b, a)
    assert set(a.tensors) == set(b.tensors) == set(bare)
    assert torch.equal(a.read("layers.0.self_attn.q_proj.weight"), tensors[Q_PROJ])
    assert set(a.locations) == set(bare)
    assert any("stripped leading 'model.' from 5 tensor names" in note for note in a.notes)
    assert not any("model." in note for note in b.notes)


def test_normalise_pair_leaves_names_alone_when_stripping_does_not_help(tmp_path):
    a = open_checkpoint(write_safetensors(tmp_path / "a", {"model.x": torch.ones(1), "y": torch.ones(1)}))
    b = open_checkpoint(write_safetensors(tmp_path / "b", {"y": torch.ones(1), "z": torch.ones(1)}))
    normalise_pair(a, b)
    assert set(a.tensors) == {"model.x", "y"} and a.notes == []


# --- ties ---------------------------------------------------------------------------------------

def test_tied_lm_head_is_dropped_when_config_ties_embeddings(tmp_path):
    folder = write_safetensors(tmp_path / "hf", sample_tensors())
    untied = open_checkpoint(folder)
    write_config(folder, tie_word_embeddings=True)
    tied = open_checkpoint(folder)
    assert "lm_head.weight" in untied.tensors
    assert "lm_head.weight" not in tied.tensors and "lm_head.weight" not in tied.locations
    assert tied.tied == {"lm_head.weight": EMBED}


# --- LoRA adapters ------------------------------------------------------------------------------

def lora_base(tmp_path: Path, prefix: str = "model.") -> Checkpoint:
    tensors = {name.replace("model.", prefix, 1): t for name, t in sample_tensors().items()}
    return open_checkpoint(write_safetensors(tmp_path / "base", tensors))


def lora_ab(adapter: dict[str, torch.Tensor], module: str) -> tuple[torch.Tensor, torch.Tensor]:
    return adapter[f"base_model.model.{module}.lora_A.weight"], adapter[f"base_model.model.{module}.lora_B.weight"]


def manual_merge(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """W + scale·(B @ A) in float32, rounded once to W's dtype."""
    return (weight.float() + scale * (b.float() @ a.float())).to(weight.dtype)


def test_lora_merge_equals_a_manual_merge(tmp_path):
    base = lora_base(tmp_path)
    adapter = {**lora_pair(Q_MODULE, 12, 8, r=4), **lora_pair(EMBED_MODULE, 16, 8, r=4, seed=1)}
    write_lora_adapter(tmp_path / "adapter", adapter, r=4, lora_alpha=8)
    tuned = open_checkpoint(tmp_path / "adapter", base=base)
    for module in (Q_MODULE, EMBED_MODULE):
        name = f"{module}.weight"
        assert torch.equal(tuned.read(name), manual_merge(base.read(name), *lora_ab(adapter, module), scale=8 / 4))
        assert tuned.read(name).dtype == base.tensors[name].dtype
        assert not torch.equal(tuned.read(name), base.read(name))
        assert name not in tuned.locations
    for name in set(base.tensors) - {Q_PROJ, EMBED}:
        assert torch.equal(tuned.read(name), base.read(name))
        assert tuned.locations[name] == base.locations[name]
    assert tuned.format.startswith("PEFT LoRA adapter (r=4, alpha=8) on safetensors")


def test_lora_adapter_without_base_asks_for_one(tmp_path):
    folder = write_lora_adapter(tmp_path / "adapter", lora_pair(Q_MODULE, 12, 8, r=4))
    with pytest.raises(CheckpointError, match=r"adapter: is a PEFT adapter; pass a base checkpoint"):
        open_checkpoint(folder)


@pytest.mark.parametrize("base_prefix", ["", "model."])
@pytest.mark.parametrize("adapter_module", ["model.layers.0.self_attn.q_proj", "layers.0.self_attn.q_proj"])
def test_lora_keys_map_to_base_names_with_or_without_model_prefix(tmp_path, base_prefix, adapter_module):
    base = lora_base(tmp_path, prefix=base_prefix)
    pair = lora_pair(adapter_module, 12, 8, r=2)
    adapter = {k.replace(".weight", ".default.weight"): v for k, v in pair.items()}  # in-memory PEFT naming
    folder = write_lora_adapter(tmp_path / "adapter", adapter, r=2, lora_alpha=2, as_bin=True)
    tuned = open_checkpoint(folder, base=base)
    name = f"{base_prefix}layers.0.self_attn.q_proj.weight"
    a, b = pair.values()
    assert torch.equal(tuned.read(name), manual_merge(base.read(name), a, b, 1.0))


def test_lora_rank_and_alpha_patterns_set_each_modules_scale(tmp_path):
    base = lora_base(tmp_path)
    adapter = {**lora_pair(Q_MODULE, 12, 8, r=2), **lora_pair(EMBED_MODULE, 16, 8, r=4, seed=1)}
    patterns = {"rank_pattern": {"q_proj": 2}, "alpha_pattern": {"self_attn.q_proj": 6}}
    write_lora_adapter(tmp_path / "adapter", adapter, r=4, lora_alpha=8, **patterns)
    tuned = open_checkpoint(tmp_path / "adapter", base=base)
    assert torch.equal(tuned.read(Q_PROJ), manual_merge(base.read(Q_PROJ), *lora_ab(adapter, Q_MODULE), 6 / 2))
    assert torch.equal(tuned.read(EMBED), manual_merge(base.read(EMBED), *lora_ab(adapter, EMBED_MODULE), 8 / 4))


def test_lora_rslora_scales_by_alpha_over_sqrt_r(tmp_path):
    base = lora_base(tmp_path)
    adapter = lora_pair(EMBED_MODULE, 16, 8, r=4)
    folder = write_lora_adapter(tmp_path / "adapter", adapter, r=4, lora_alpha=8, use_rslora=True)
    tuned = open_checkpoint(folder, base=base)
    a, b = adapter.values()
    assert torch.equal(tuned.read(EMBED), manual_merge(base.read(EMBED), a, b, 8 / math.sqrt(4)))
    assert "rslora" in tuned.format


def test_lora_fan_in_fan_out_adds_the_transposed_update(tmp_path):
    name = "transformer.h.0.attn.c_attn.weight"  # GPT-2 Conv1D: stored (in, out)
    base = open_checkpoint(write_safetensors(tmp_path / "base", {name: torch.randn(8, 24)}))
    adapter = lora_pair("transformer.h.0.attn.c_attn", 24, 8, r=4)
    folder = write_lora_adapter(tmp_path / "adapter", adapter, r=4, lora_alpha=4, fan_in_fan_out=True)
    tuned = open_checkpoint(folder, base=base)
    a, b = adapter.values()
    assert torch.equal(tuned.read(name), base.read(name) + (b @ a).T)


@pytest.mark.parametrize("key", [
    "base_model.model.lm_head.weight",
    "base_model.model.lm_head.modules_to_save.default.weight",
])
def test_lora_modules_to_save_replace_the_base_tensor(tmp_path, key):
    base = lora_base(tmp_path)
    head = torch.full((16, 8), 3.0)
    adapter = {**lora_pair(EMBED_MODULE, 16, 8, r=4), key: head}
    tuned = open_checkpoint(write_lora_adapter(tmp_path / "adapter", adapter, modules_to_save=["lm_head"]), base=base)
    assert torch.equal(tuned.read("lm_head.weight"), head)
    assert tuned.locations["lm_head.weight"][0] == tmp_path / "adapter" / "adapter_model.safetensors"


def test_lora_modules_to_save_untie_a_tied_head(tmp_path):
    folder = write_config(write_safetensors(tmp_path / "base", sample_tensors()), tie_word_embeddings=True)
    base = open_checkpoint(folder)
    head = torch.full((16, 8), 3.0)
    adapter = {**lora_pair(EMBED_MODULE, 16, 8, r=4), "base_model.model.lm_head.weight": head}
    tuned = open_checkpoint(write_lora_adapter(tmp_path / "adapter", adapter, modules_to_save=["lm_head"]), base=base)
    assert torch.equal(tuned.read("lm_head.weight"), head)
    assert base.tied == {"lm_head.weight": EMBED} and tuned.tied == {}


def test_lora_adapter_targeting_a_missing_base_tensor_names_file_and_tensor(tmp_path):
    base = lora_base(tmp_path)
    adapter = {**lora_pair(Q_MODULE, 12, 8, r=4), **lora_pair("model.layers.0.mlp.up_proj", 8, 8, r=4, seed=1)}
    write_lora_adapter(tmp_path / "adapter", adapter)
    with pytest.raises(
        CheckpointError,
        match=r"adapter_model\.safetensors: tensor base_model\.model\.model\.layers\.0\.mlp\.up_proj\.lora_A\.weight"
        r" targets model\.layers\.0\.mlp\.up_proj\.weight, which .*base does not have",
    ):
        open_checkpoint(tmp_path / "adapter", base=base)


def test_lora_update_of_the_wrong_shape_is_refused(tmp_path):
    base = lora_base(tmp_path)
    write_lora_adapter(tmp_path / "adapter", lora_pair(Q_MODULE, 8, 12, r=4))
    with pytest.raises(CheckpointError, match=r"LoRA update of shape \[8, 12\] does not fit .*q_proj\.weight"):
        open_checkpoint(tmp_path / "adapter", base=base)


@pytest.mark.parametrize(
    "config, tensors, message",
    [
        ({"peft_type": "IA3"}, {}, "PEFT type IA3 is not supported"),
        ({"use_dora": True}, {}, "DoRA is supported on linear layers with a lora_magnitude_vector only"),
        ({"kasa_config": {"k": 1}}, {}, "LoRA variant kasa_config is not supported"),
        ({}, {f"base_model.model.{Q_MODULE}.lora_B.bias": torch.ones(12)}, "unsupported adapter content"),
    ],
)
def test_unsupported_adapters_are_refused(tmp_path, config, tensors, message):
    base = lora_base(tmp_path)
    adapter = {**lora_pair(Q_MODULE, 12, 8, r=4), **tensors}
    folder = write_lora_adapter(tmp_path / "adapter", adapter)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, **config}))
    with pytest.raises(CheckpointError, match=message):
        open_checkpoint(folder, base=base)


@pytest.mark.parametrize("use_rslora", [False, True])
def test_lora_merge_matches_peft_merge_and_unload(tmp_path, use_rslora):
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=64, tie_word_embeddings=False,
    )
    model = transformers.Qwen2ForCausalLM(config)
    model.save_pretrained(tmp_path / "base")
    lora = peft.LoraConfig(
        r=4, lora_alpha=8, use_rslora=use_rslora, init_lora_weights=False,
        target_modules=["q_proj", "v_proj", "down_proj", "embed_tokens"],
        rank_pattern={"down_proj": 2}, alpha_pattern={"layers.1.self_attn.v_proj": 3}, modules_to_save=["lm_head"],
    )
    peft_model = peft.get_peft_model(model, lora)
    with torch.no_grad():
        peft_model.base_model.model.lm_head.modules_to_save["default"].weight.add_(1.0)
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = peft_model.merge_and_unload().state_dict()

    base = open_checkpoint(tmp_path / "base")
    tuned = open_checkpoint(tmp_path / "adapter", base=base)
    assert set(tuned.tensors) == set(merged)
    changed = [name for name in merged if not torch.equal(merged[name], base.read(name))]
    assert len(changed) == 2 * 3 + 1 + 1  # q, v, down in 2 layers; embed_tokens; lm_head
    for name, expected in merged.items():
        torch.testing.assert_close(tuned.read(name), expected, rtol=0, atol=1e-6, msg=name)
