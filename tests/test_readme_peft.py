"""README "Using dynamics in a PEFT study": every Python block and CLI line runs on tiny models."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch
from transformers import Qwen2ForCausalLM

from dynamics.cli import main
from tests.tiny_lm import tiny_config

README = Path(__file__).resolve().parents[1] / "README.md"


def _section() -> str:
    text = README.read_text()
    start = text.index("## Using dynamics in a PEFT study")
    return text[start: text.index("\n## ", start + 1)]


def _rl_like_run(base: Qwen2ForCausalLM, folder: Path, seed: int) -> None:
    """A few AdamW steps from the base on seed-dependent tokens in fp32, saved as bf16 (like RL checkpoints)."""
    model = Qwen2ForCausalLM(base.config)
    model.load_state_dict(base.state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
    tokens = torch.randint(0, base.config.vocab_size, (4, 16), generator=torch.Generator().manual_seed(seed))
    for _ in range(3):
        model(input_ids=tokens, labels=tokens).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.to(torch.bfloat16).save_pretrained(folder)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    torch.manual_seed(0)
    base = Qwen2ForCausalLM(tiny_config(64))
    base.to(torch.bfloat16).save_pretrained(root / "runs" / "base")
    base.float()  # fp32 masters holding the stored bf16 values exactly
    for seed in (1, 2):
        _rl_like_run(base, root / "runs" / f"rl-s{seed}", seed)
    return root


def _blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", _section(), flags=re.DOTALL)


@pytest.mark.parametrize("index", range(3))
def test_python_example_runs(study, monkeypatch, index):
    monkeypatch.chdir(study)
    code = _blocks("python")[index]
    exec(compile(code, f"README example {index + 1}", "exec"), {"__name__": "__readme__"})  # noqa: S102 - the README's own code


def test_cli_lines_run(study, monkeypatch):
    monkeypatch.chdir(study)
    (lines,) = re.findall(r"```\n(dynamics .*?)```", _section(), flags=re.DOTALL)
    for line in lines.strip().splitlines():
        assert main(shlex.split(line)[1:]) == 0, line
