"""What a fine-tuning run leaves behind at each saved step: a bf16 checkpoint (fp32 master on request), and on
the held-out prompts greedy generations, `samples_per_prompt` sampled ones (T = 1, no top-k/top-p cut), both
appended to the run's `generations.jsonl`, and p(code) = `probes.style.style_probability` with the opening
"```" (one token of the lab tokenizer, whose pre-tokenizer splits it from "python") per prompt, appended to
`style.jsonl` as `StyleRecord`s. The checkpoint folder is written last and appears whole, so a run whose last
checkpoint exists is complete.

Sampled evaluation draws from its own generator state, torch seeded with `EVAL_SAMPLING_SEED` inside
`fork_rng`: the training stream is untouched, and every run and step (the base's step 0 included) samples with
the same random numbers, so a shift between two checkpoints is the models' difference, not a fresh draw of
sampling noise (common random numbers; the bootstrap over prompts carries the prompts' noise).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from probes.generations import Generation, write_generations
from probes.lab.checkpoints import checkpoint_name, save_checkpoint
from probes.lab.tasks import Problem
from probes.lab.tokenizer import format_prompt
from probes.sampling import decode_responses, generate
from probes.style import StyleRecord, style_probability, write_style_records

CODE_OPENINGS = ["```"]
EVAL_SAMPLING_SEED = 0


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
    samples_per_prompt: int  # sampled generations per held-out prompt at each saved step (T = 1)


@dataclass(frozen=True)
class Evaluation:
    """A checkpoint's held-out measures: greedy and sampled generations, p(code) per prompt."""

    generations: list[Generation]
    style: list[StyleRecord]

    def relabelled(self, labels: RunLabels, step: int) -> Evaluation:
        """The same measures under another run's labels and step (the base's step 0 in every run)."""
        names = {"run": labels.run, "seed": labels.seed, "reward": labels.reward, "step": step}
        return Evaluation([replace(g, **names) for g in self.generations], [replace(r, **names) for r in self.style])


def heldout_generations(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, problems: list[Problem],
                        labels: RunLabels, step: int, settings: EvalConfig) -> list[Generation]:
    """One greedy response per held-out problem, labelled for the generations jsonl."""
    return _generations(model, tokenizer, problems, labels, step, settings, samples=0)


def evaluate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, problems: list[Problem],
             labels: RunLabels, step: int, settings: EvalConfig) -> Evaluation:
    """Greedy generations, `samples_per_prompt` sampled ones (torch seeded with EVAL_SAMPLING_SEED), p(code)."""
    generations = heldout_generations(model, tokenizer, problems, labels, step, settings)
    device = next(model.parameters()).device
    if settings.samples_per_prompt:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(EVAL_SAMPLING_SEED)
            generations += _generations(model, tokenizer, problems, labels, step, settings,
                                        samples=settings.samples_per_prompt)
    p_code = style_probability(model, tokenizer, [format_prompt(p.text) for p in problems], CODE_OPENINGS,
                               settings.batch_size)
    style = [StyleRecord(prompt_id=p.prompt_id, step=step, p_style=float(value), run=labels.run, seed=labels.seed,
                         reward=labels.reward) for p, value in zip(problems, p_code.tolist())]
    return Evaluation(generations, style)


def _generations(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, problems: list[Problem],
                 labels: RunLabels, step: int, settings: EvalConfig, samples: int) -> list[Generation]:
    """Greedy responses (`samples` = 0), or `samples` sampled ones per problem (index 0…samples − 1), drawn in
    generate calls of at most `batch_size` rows."""
    rows = [(p, None) for p in problems] if samples == 0 else [(p, i) for p in problems for i in range(samples)]
    out = []
    for start in range(0, len(rows), settings.batch_size):
        chunk = rows[start:start + settings.batch_size]
        prompts = [format_prompt(p.text) for p, _ in chunk]
        responses = decode_responses(tokenizer, generate(model, tokenizer, prompts, settings.max_new_tokens,
                                                         sample=samples > 0))
        out += [Generation(prompt=prompt, response=response, prompt_id=p.prompt_id, answer=p.answer,
                           run=labels.run, step=step, seed=labels.seed, reward=labels.reward, sample=index or 0,
                           decoding="greedy" if index is None else "sampled")
                for (p, index), prompt, response in zip(chunk, prompts, responses)]
    return out


class RunRecorder:
    """Writes checkpoints, generations, style records and the training log of one run folder."""

    def __init__(self, run_dir: Path, labels: RunLabels, tokenizer: PreTrainedTokenizerFast,
                 heldout: list[Problem], settings: EvalConfig, save_every_steps: int, save_fp32: bool) -> None:
        self.run_dir, self.labels, self.tokenizer = run_dir, labels, tokenizer
        self.heldout, self.settings = heldout, settings
        self.save_every_steps, self.save_fp32 = save_every_steps, save_fp32
        run_dir.mkdir(parents=True, exist_ok=True)

    @property
    def generations_path(self) -> Path:
        return self.run_dir / "generations.jsonl"

    @property
    def style_path(self) -> Path:
        return self.run_dir / "style.jsonl"

    def start(self, model: PreTrainedModel, base: Evaluation) -> None:
        """Step 0 = the base model's measures, relabelled for this run; a fresh training log; with fp32
        masters on, `fp32/checkpoint-0` = the starting point (the bf16 base upcast)."""
        if self.save_fp32:
            save_checkpoint(model, self.tokenizer, self.run_dir / "fp32" / checkpoint_name(0), torch.float32)
        start = base.relabelled(self.labels, 0)
        write_generations(start.generations, self.generations_path)
        write_style_records(start.style, self.style_path)
        (self.run_dir / "train_log.jsonl").write_text("")

    def log(self, record: dict[str, float]) -> None:
        with (self.run_dir / "train_log.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")

    def after_step(self, model: PreTrainedModel, step: int, total_steps: int) -> None:
        """Every `save_every_steps` optimizer steps and at the last one: the held-out measures, the fp32 master
        on request, then the bf16 checkpoint."""
        if step % self.save_every_steps and step != total_steps:
            return
        evaluation = evaluate(model, self.tokenizer, self.heldout, self.labels, step, self.settings)
        write_generations(evaluation.generations, self.generations_path, append=True)
        write_style_records(evaluation.style, self.style_path, append=True)
        if self.save_fp32:
            save_checkpoint(model, self.tokenizer, self.run_dir / "fp32" / checkpoint_name(step), torch.float32)
        save_checkpoint(model, self.tokenizer, self.run_dir / checkpoint_name(step), torch.bfloat16)
