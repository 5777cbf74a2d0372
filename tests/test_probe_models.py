"""Model and tokenizer loading for the probes: the tokenizer that was saved, the base that was named, quiet loads."""

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM

from dynamics.cli import main
from probes.fisher import fisher_alignment
from probes.kl import kl_drift
from probes.lab.checkpoints import load_for_training
from probes.lab.tokenizer import save_tokenizer, train_tokenizer
from probes.models import ProbeError, Prompt, check_tokenizer, load_model, load_tokenizer, probe_tokenizer
from tests.tiny_lm import TEXTS, save_tiny_lm, tiny_config

WORDS = ["<eos>", "<pad>", "[UNK]", "what", "is", "nine", "minus", "four", "?", "five", "the", "answer"]


def _word_level_qwen2(folder: Path) -> Path:
    """A qwen2 model folder whose tokenizer.json is a whitespace word-level vocabulary (saved with
    PreTrainedTokenizerFast), the case AutoTokenizer misreads as Qwen2Tokenizer in transformers 5."""
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>",
                                        unk_token="[UNK]")
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(tiny_config(len(WORDS)))
    model.config.eos_token_id, model.config.pad_token_id = 0, 1
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_word_level_tokenizer_in_a_qwen2_folder_loads_as_saved(tmp_path):
    folder = _word_level_qwen2(tmp_path / "words")
    assert json.loads((folder / "config.json").read_text())["model_type"] == "qwen2"
    tokenizer = load_tokenizer(folder)
    assert tokenizer("what is nine minus four ?", add_special_tokens=False)["input_ids"] == [3, 4, 5, 6, 7, 8]
    assert tokenizer("nine")["input_ids"] == [5]
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token) == ("<eos>", "<pad>", "[UNK]")
    check_tokenizer(tokenizer, folder, ["what is nine minus four ?", "the answer is five"])


def test_kl_on_a_word_level_qwen2_pair_scores_every_word(tmp_path):
    base, tuned = _word_level_qwen2(tmp_path / "b"), _word_level_qwen2(tmp_path / "t")
    result = kl_drift(base, tuned, responses=[("what is nine minus four ?", "the answer is five")],
                      chat_template=False, device="cpu")
    assert result.tokens == 4 and result.kl_mean_per_token == 0.0


def test_a_tokenizer_that_does_not_reproduce_the_saved_file_is_one_line_naming_the_folder(tmp_path):
    words = _word_level_qwen2(tmp_path / "words")
    other = load_tokenizer(save_tiny_lm(tmp_path / "bpe"))
    with pytest.raises(ProbeError, match=f"^{words}: the loaded tokenizer .* does not reproduce tokenizer.json"):
        check_tokenizer(other, words, ["what is nine ?"])


def test_lab_tokenizers_reload_identically(tmp_path):
    trained = train_tokenizer(TEXTS, vocab_size=300)
    save_tokenizer(trained, tmp_path)
    for loaded in (load_tokenizer(tmp_path), probe_tokenizer(tmp_path, None, TEXTS, chat_template=True)):
        for text in TEXTS + ["print(12345)\n    x = 7 - 4"]:
            assert loaded(text)["input_ids"] == trained(text)["input_ids"]
            assert loaded.decode(loaded(text)["input_ids"]) == text
        assert (loaded.eos_token_id, loaded.pad_token_id, loaded.bos_token) == (
            trained.eos_token_id, trained.pad_token_id, None)
        assert loaded.padding_side == "left" and not loaded.chat_template


def test_lab_checkpoints_load_for_training_with_the_saved_tokenizer(tmp_path):
    folder = save_tiny_lm(tmp_path / "m")
    _, tokenizer = load_for_training(folder, torch.device("cpu"))
    check_tokenizer(tokenizer, folder, TEXTS)


@pytest.fixture(scope="module")
def adapter_pair(tmp_path_factory):
    """A tiny base and a PEFT LoRA adapter on it (written by peft) whose config names a base that does not
    exist, as an adapter trained from a hub id and then moved to a machine without network looks."""
    peft = pytest.importorskip("peft")
    root = tmp_path_factory.mktemp("adapter")
    base = save_tiny_lm(root / "base", seed=5)
    torch.manual_seed(1)
    lora = peft.get_peft_model(load_model(base, torch.device("cpu")),
                               peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                               init_lora_weights=False))
    adapter = root / "adapter"
    lora.save_pretrained(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "no-such-org/no-such-model"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    return base, adapter, lora.eval()


def test_an_adapter_is_applied_to_the_named_base_as_peft_runs_it(adapter_pair):
    base, adapter, lora = adapter_pair
    model = load_model(adapter, torch.device("cpu"), base=base)
    ids = torch.tensor([[5, 17, 42, 8, 99]])
    with torch.no_grad():
        expected, got = lora(input_ids=ids).logits, model(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    plain = load_model(base, torch.device("cpu"))
    assert not torch.equal(plain(input_ids=ids).logits, got)


def test_an_adapter_without_a_base_is_one_line(adapter_pair):
    _, adapter, _ = adapter_pair
    with pytest.raises(ProbeError, match=f"^{adapter}: is a PEFT adapter; name the base model"):
        load_model(adapter, torch.device("cpu"))


def test_kl_of_an_adapter_uses_the_base_on_the_command_line(adapter_pair, tmp_path):
    base, adapter, lora = adapter_pair
    merged = tmp_path / "merged"
    lora.merge_and_unload().save_pretrained(merged)
    load_tokenizer(base).save_pretrained(merged)
    pairs = [("Question: what is 2 + 3?\nAnswer:\n", "5 apples")]
    from_adapter = kl_drift(base, adapter, responses=pairs, chat_template=False, device="cpu")
    from_merged = kl_drift(base, merged, responses=pairs, chat_template=False, device="cpu")
    assert from_adapter.kl_mean_per_token > 0
    assert from_adapter.kl_mean_per_token == pytest.approx(from_merged.kl_mean_per_token, rel=1e-4)


def test_probe_generate_takes_an_adapter_and_its_base(adapter_pair, tmp_path, capsys):
    base, adapter, _ = adapter_pair
    prompts, out = tmp_path / "p.jsonl", tmp_path / "gens.jsonl"
    prompts.write_text('{"prompt": "Q"}\n')
    command = ["probe", "generate", str(adapter), "--prompts", str(prompts), "--out", str(out),
               "--max-new-tokens", "3", "--device", "cpu", "-q"]
    assert main(command) == 2
    assert "is a PEFT adapter" in capsys.readouterr().err
    assert main(command + ["--base", str(base)]) == 0 and out.is_file()


def test_quiet_silences_transformers_loading_bars(tmp_path, capsys):
    model = save_tiny_lm(tmp_path / "m")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Q"}\n')
    command = ["probe", "kl", str(model), str(model), "--prompts", str(prompts), "--samples-per-prompt", "1",
               "--max-new-tokens", "2", "--device", "cpu"]
    assert main(command) == 0
    assert "Loading weights" in capsys.readouterr().err  # the bar this test is about, without -q
    assert main(command + ["-q"]) == 0
    assert "Loading weights" not in capsys.readouterr().err


def test_fisher_of_an_adapter_uses_the_base_on_the_command_line(adapter_pair):
    base, adapter, _ = adapter_pair
    result = fisher_alignment(base, adapter, [Prompt("Q", "a")], max_new_tokens=3, layers={0}, device="cpu")
    changed = {t.name for t in result.tensors if t.n_changed}
    assert changed == {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.v_proj.weight"}
