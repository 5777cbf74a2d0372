"""p(style): hand-computed softmax on a constant-logit model, multi-token openings, prefix-free refusal, a float64
reference on a random tiny model with padding, records round trip, the CLI."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import Qwen2ForCausalLM

from dynamics.cli import main
from probes.lab.tokenizer import train_tokenizer
from probes.models import load_model, load_tokenizer
from probes.style import (
    StyleError,
    StyleRecord,
    StyleResult,
    read_style_records,
    style_probability,
    write_style_records,
)
from tests.tiny_lm import TEXTS, constant_logits_lm, save_tiny_lm, tiny_config

PROMPTS = ["Question: what is 2 + 3?\nAnswer:\n", "Q", "Question: what is 7 - 4?\nAnswer:"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, vocab_size=300)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_constant_logits_give_the_hand_computed_probability(tokenizer):
    # π puts 0.4 on "```", 0.2 on "5" and on the three tokens of "print" 0.2, 0.1, 0.1, zero elsewhere, in every
    # context. p("```") = 0.4; p("print") = 0.2·0.1·0.1 = 0.002; p over {"```", "5", "print"} = 0.4 + 0.2 + 0.002.
    fence, five, (pr, in_, t) = _ids(tokenizer, "```"), _ids(tokenizer, "5"), _ids(tokenizer, "print")
    assert len(fence) == len(five) == 1 and len({fence[0], five[0], pr, in_, t}) == 5
    logits = torch.full((len(tokenizer),), -1e4)
    for token, p in ((fence[0], 0.4), (five[0], 0.2), (pr, 0.2), (in_, 0.1), (t, 0.1)):
        logits[token] = math.log(p)
    model = constant_logits_lm(logits)
    single = style_probability(model, tokenizer, PROMPTS, ["```"])
    assert single.dtype == torch.float64 and single.shape == (3,)
    assert single.tolist() == pytest.approx([0.4] * 3, rel=1e-5)
    assert style_probability(model, tokenizer, PROMPTS, ["print"]).tolist() == pytest.approx([0.002] * 3, rel=1e-5)
    both = style_probability(model, tokenizer, PROMPTS, ["```", "5", "print"], batch_size=2)
    assert both.tolist() == pytest.approx([0.602] * 3, rel=1e-5)


def test_openings_that_are_not_prefix_free_are_refused(tokenizer):
    model = constant_logits_lm(torch.zeros(len(tokenizer)))
    with pytest.raises(StyleError, match="'```' and '```python': not prefix-free"):
        style_probability(model, tokenizer, PROMPTS, ["```", "```python"])
    with pytest.raises(StyleError, match="not prefix-free"):
        style_probability(model, tokenizer, PROMPTS, ["5", "5"])
    with pytest.raises(StyleError, match="no tokens"):
        style_probability(model, tokenizer, PROMPTS, [""])


def test_matches_a_float64_unpadded_reference_on_a_random_model(tokenizer):
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(tiny_config(len(tokenizer)))
    openings = ["```", "print", "5"]
    got = style_probability(model, tokenizer, PROMPTS, openings, batch_size=2)
    reference = model.double()
    expected = []
    for prompt in PROMPTS:
        total = 0.0
        for opening in openings:
            ids = torch.tensor([tokenizer(prompt)["input_ids"] + _ids(tokenizer, opening)])
            with torch.no_grad():
                log_p = F.log_softmax(reference(input_ids=ids).logits[0].double(), -1)
            n = len(_ids(tokenizer, opening))
            targets = ids[0, -n:]
            total += math.exp(log_p[-n - 1:-1].gather(-1, targets[:, None]).sum().item())
        expected.append(total)
    assert got.tolist() == pytest.approx(expected, rel=1e-5)
    assert len({round(v, 8) for v in expected}) == 3  # the contexts matter: a test that padding could fail


def test_style_records_round_trip_and_a_bad_line_names_the_file(tmp_path):
    path = tmp_path / "style.jsonl"
    records = [StyleRecord("a", 0, 0.6, run="r", seed=1, reward="random"), StyleRecord("b", 10, 0.25)]
    write_style_records(records[:1], path)
    write_style_records(records[1:], path, append=True)
    assert read_style_records(path) == records
    path.write_text('{"prompt_id": "a", "p_style": "high"}\n')
    with pytest.raises(StyleError, match=r"style.jsonl:1: a line needs"):
        read_style_records(path)


def test_cli_writes_per_model_estimates_and_paired_shifts(tmp_path, capsys):
    base, tuned = save_tiny_lm(tmp_path / "base", seed=1), save_tiny_lm(tmp_path / "tuned", seed=2)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "prompt_id": str(i)}) + "\n" for i, p in enumerate(PROMPTS)))
    out = tmp_path / "style.json"
    assert main(["probe", "style", str(base), str(tuned), "--prompts", str(prompts), "--openings", "```", "5",
                 "--bootstrap", "200", "--json", str(out), "-q", "--device", "cpu"]) == 0
    assert "shift vs" in capsys.readouterr().out
    result = StyleResult.from_json(json.loads(out.read_text()))
    tokenizer = load_tokenizer(base)
    direct = [style_probability(load_model(m, torch.device("cpu")), tokenizer, PROMPTS, ["```", "5"]).tolist()
              for m in (base, tuned)]
    np.testing.assert_allclose(np.array(result.p_style), np.array(direct), rtol=1e-6)
    first, second = result.models
    assert first.shift is None and second.shift == pytest.approx(np.mean(direct[1]) - np.mean(direct[0]))
    assert second.shift_ci95[0] <= second.shift <= second.shift_ci95[1] and first.ci95[0] <= first.mean


def test_cli_refuses_openings_that_are_not_prefix_free_in_one_line(tmp_path, capsys):
    base = save_tiny_lm(tmp_path / "base")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Q"}) + "\n")
    capsys.readouterr()
    assert main(["probe", "style", str(base), "--prompts", str(prompts), "--openings", "```", "```python",
                 "-q", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not prefix-free" in err and len(err.splitlines()) == 1
