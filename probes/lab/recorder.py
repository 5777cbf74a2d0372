"""What a fine-tuning run leaves behind at each saved step: a bf16 checkpoint (fp32 master on request) and
greedy generations on the held-out prompts, appended to the run's `generations.jsonl`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from probes.generations import Generation, write_generations
from probes.lab.checkpoints import checkpoint_name, save_checkpoint
from probes.lab.tasks import Problem
from probes.lab.tokenizer import format_prompt
from probes.sampling import decode_responses, generate


@dataclass(frozen=True)
class RunLabels:
    """The labels every generation of a run carries: run (without the seed), reward label, seed."""

    run: str
    reward: str
    seed: int


@dataclass(frozen=True)
class EvalConfig:
    max_new_tokens: int
    batch_size: int


def heldout_generations(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, problems: list[Problem],
                        labels: RunLabels, step: int, settings: EvalConfig) -> list[Generation]:
    """One greedy response per held-out problem, labelled for the generations jsonl."""
    out = []
    for start in range(0, len(problems), settings.batch_size):
        chunk = problems[start:start + settings.batch_size]
        prompts = [format_prompt(p.text) for p in chunk]
        responses = decode_responses(tokenizer, generate(model, tokenizer, prompts, settings.max_new_tokens,
                                                         sample=False))
        out += [Generation(prompt=prompt, response=response, prompt_id=p.prompt_id, answer=p.answer,
                           run=labels.run, step=step, seed=labels.seed, reward=labels.reward, sample=0,
                           decoding="greedy")
                for p, prompt, response in zip(chunk, prompts, responses)]
    return out


class RunRecorder:
    """Writes checkpoints, generations and the training log of one run folder."""

    def __init__(self, run_dir: Path, labels: RunLabels, tokenizer: PreTrainedTokenizerFast,
                 heldout: list[Problem], settings: EvalConfig, save_every_steps: int, save_fp32: bool) -> None:
        self.run_dir, self.labels, self.tokenizer = run_dir, labels, tokenizer
        self.heldout, self.settings = heldout, settings
        self.save_every_steps, self.save_fp32 = save_every_steps, save_fp32
        run_dir.mkdir(parents=True, exist_ok=True)

    @property
    def generations_path(self) -> Path:
        return self.run_dir / "generations.jsonl"

    def start(self, model: PreTrainedModel, base_generations: list[Generation]) -> None:
        """Step 0 = the base model's generations, relabelled for this run; a fresh training log; with fp32
        masters on, `fp32/checkpoint-0` = the starting point (the bf16 base upcast)."""
        if self.save_fp32:
            save_checkpoint(model, self.tokenizer, self.run_dir / "fp32" / checkpoint_name(0), torch.float32)
        relabelled = [Generation(**{**g.__dict__, "run": self.labels.run, "seed": self.labels.seed,
                                    "reward": self.labels.reward, "step": 0}) for g in base_generations]
        write_generations(relabelled, self.generations_path)
        (self.run_dir / "train_log.jsonl").write_text("")

    def log(self, record: dict[str, float]) -> None:
        with (self.run_dir / "train_log.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")

    def after_step(self, model: PreTrainedModel, step: int, total_steps: int) -> None:
        """Save a checkpoint and generations every `save_every_steps` optimizer steps and at the last one."""
        if step % self.save_every_steps and step != total_steps:
            return
        save_checkpoint(model, self.tokenizer, self.run_dir / checkpoint_name(step), torch.bfloat16)
        if self.save_fp32:
            save_checkpoint(model, self.tokenizer, self.run_dir / "fp32" / checkpoint_name(step), torch.float32)
        generations = heldout_generations(model, self.tokenizer, self.heldout, self.labels, step, self.settings)
        write_generations(generations, self.generations_path, append=True)
