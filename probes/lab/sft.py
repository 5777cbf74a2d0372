"""SFT: cross-entropy on correct traces of the training problems, response tokens only.

A trace's style follows the base's corpus (its p(code)), with no arithmetic slips: the SFT run is shown the
right answer in the style the base already writes. Constant learning rate after a short warmup, AdamW.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from probes.lab.recorder import RunRecorder
from probes.lab.supervised import text_loss
from probes.lab.tasks import NO_SLIPS, Problem, corpus_trace
from probes.lab.tokenizer import format_prompt


@dataclass(frozen=True)
class SFTConfig:
    steps: int
    batch_size: int
    lr: float
    warmup_steps: int = 10
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0


def train_sft(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, problems: list[Problem],
              settings: SFTConfig, code_probability: float | None, rng: random.Random, recorder: RunRecorder,
              progress: bool) -> None:
    """`settings.steps` optimizer steps of SFT on slip-free traces with the base corpus's `code_probability`
    (None: per template); the recorder saves checkpoints on the way."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / settings.warmup_steps))
    model.train()
    bar = tqdm(range(1, settings.steps + 1), desc="sft", disable=not progress)
    for step in bar:
        batch = rng.sample(problems, settings.batch_size)
        traces = [corpus_trace(p, rng, NO_SLIPS, code_probability)[1] for p in batch]
        loss = text_loss(model, tokenizer, [format_prompt(p.text) for p in batch], traces, responses_only=True)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        recorder.log({"step": step, "loss": loss.item()})
        bar.set_postfix(loss=f"{loss.item():.3f}")
        recorder.after_step(model, step, settings.steps)
    model.eval()
