"""A micro lab study (seconds on the CPU) as a session-scoped fixture, for any test that needs a lab folder.

Use it from a test module with `from lab_fixture import lab_dir  # noqa: F401` (pytest puts tests/ on the
path); the folder follows the lab contract: manifest.json, base-code-helps/, code-helps/<run>-s<seed>/ with
run.json, checkpoint-1/ and checkpoint-2/ (bf16), fp32/checkpoint-{0,1,2}/, generations.jsonl (greedy and
sampled) and style.jsonl.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from probes.lab.grpo import GRPOConfig
from probes.lab.pretrain import PretrainConfig
from probes.lab.recorder import EvalConfig
from probes.lab.sft import SFTConfig
from probes.lab.study import LAB_PRESETS, LabConfig, run_study

MICRO_REWARDS = ["true", "random", "incorrect", "sft"]
MICRO_SEEDS = [1, 2]


def micro_lab_config() -> LabConfig:
    """The tiny model, barely pretrained; 2 optimizer steps per run (one GRPO rollout of two mini-batches)."""
    return replace(
        LAB_PRESETS["tiny"],
        train_problems=200, heldout_problems=8,
        pretrain=PretrainConfig(steps=30, batch_size=16, lr=3e-3, warmup_steps=5, tokenizer_texts=200),
        sft=SFTConfig(steps=2, batch_size=4, lr=2e-5, warmup_steps=1),
        grpo=GRPOConfig(steps=2, rollout_prompts=4, group_size=4, updates_per_rollout=2, lr=1e-6, max_new_tokens=24),
        evaluation=EvalConfig(max_new_tokens=24, batch_size=16, samples_per_prompt=2),
        rl_save_every_steps=1, sft_save_every_steps=1, majority_problems=40, majority_samples=4,
        save_fp32=True, parallel_runs=1,
    )


@pytest.fixture(scope="session")
def lab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A micro lab folder: every reward label on the code-helps base, seeds 1 and 2, built once per session."""
    out = tmp_path_factory.mktemp("lab") / "runs"
    run_study(micro_lab_config(), out, seeds=MICRO_SEEDS, rewards=MICRO_REWARDS, device="cpu", progress=False)
    return out
