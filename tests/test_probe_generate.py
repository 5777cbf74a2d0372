"""probe generate: greedy determinism and batch-size invariance, seeded sampling, a valid generations file."""

import json

import pytest
import torch

from dynamics.cli import main
from probes.generate import generate_responses
from probes.generations import read_generations
from probes.models import ProbeError, Prompt, load_model, load_tokenizer, read_prompts
from tests.tiny_lm import save_tiny_lm

PROMPTS = [Prompt("Question: what is 2 + 3?\nAnswer:\n", "a", "5"), Prompt("Q", "b", "9"),
           Prompt("Question: 7?", "c", None)]


def _model(tmp_path):
    folder = save_tiny_lm(tmp_path / "m", seed=4)
    return load_model(folder, torch.device("cpu")), load_tokenizer(folder)


def test_greedy_is_deterministic_and_batch_size_invariant(tmp_path):
    model, tokenizer = _model(tmp_path)
    one = generate_responses(model, tokenizer, PROMPTS, max_new_tokens=8, batch_size=1)
    three = generate_responses(model, tokenizer, PROMPTS, max_new_tokens=8, batch_size=3)
    assert [g.response for g in one] == [g.response for g in three]
    assert [(g.prompt_id, g.answer, g.sample, g.decoding) for g in one] == [("a", "5", 0, "greedy"),
                                                                           ("b", "9", 0, "greedy"),
                                                                           ("c", None, 0, "greedy")]


def test_sampling_is_seeded(tmp_path):
    model, tokenizer = _model(tmp_path)

    def sampled(seed):
        return [g.response for g in generate_responses(model, tokenizer, PROMPTS, greedy=False, samples_per_prompt=2,
                                                       max_new_tokens=8, seed=seed)]

    assert sampled(1) == sampled(1)
    assert sampled(1) != sampled(2)


def test_cli_writes_a_valid_generations_file(tmp_path):
    folder = save_tiny_lm(tmp_path / "m", seed=4)
    prompts, out = tmp_path / "p.jsonl", tmp_path / "gens.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p.prompt, "prompt_id": p.prompt_id, "answer": p.answer})
                                 for p in PROMPTS))
    assert main(["probe", "generate", str(folder), "--prompts", str(prompts), "--out", str(out),
                 "--samples-per-prompt", "1", "--max-new-tokens", "6", "--step", "7", "--reward", "random",
                 "--device", "cpu", "-q"]) == 0
    rows = read_generations(out)
    assert len(rows) == 6 and {g.run for g in rows} == {"m"} and {g.step for g in rows} == {7}
    assert {g.decoding for g in rows} == {"greedy", "sampled"} and {g.reward for g in rows} == {"random"}


def test_prompt_file_errors_name_file_and_line(tmp_path):

    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "Q", "answer": 3}\n\n{"text": "no prompt"}\n')
    with pytest.raises(ProbeError, match=f"{path}:3: a line needs a string field 'prompt'"):
        read_prompts(path)
    path.write_text('{"prompt": "Q", "answer": 3}\n')
    (prompt,) = read_prompts(path)
    assert (prompt.prompt_id, prompt.answer) == ("1", "3")
