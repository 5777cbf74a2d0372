"""Pretraining: a tokenizer and a Qwen2 model trained from scratch on the two-style trace corpus → the base.

The corpus is `Question: … Answer: <trace><|endoftext|>` for the training problems only; every step draws a
fresh batch of problems and a fresh trace for each (style by p(code), arithmetic slips by style; see
`probes.lab.tasks`). AdamW with warmup and cosine decay; the base is saved in bf16 with its tokenizer.

The bases (`BASES`) share this recipe and differ only in the corpus writer:
  code-helps  p(code) = 0.65 for every problem; language traces forget carries (60% of carry steps)
  code-hurts  p(code) = 0.65; code traces forget carries instead, language traces do not
  no-code     p(code) = 0; language traces forget carries (the code-helps slips, never code)
  template    p(code) by template (0.85 … 0.25); language traces forget carries (the lab's first base)
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import Qwen2ForCausalLM

from probes.lab.checkpoints import save_checkpoint
from probes.lab.models import MODEL_SHAPES, qwen2_config
from probes.lab.supervised import text_loss, warmup_cosine
from probes.lab.tasks import DEFAULT_SLIPS, STYLE_CODE_PROBABILITY, Problem, Slips, corpus_trace
from probes.lab.tokenizer import format_prompt, train_tokenizer


@dataclass(frozen=True)
class CorpusConfig:
    """The corpus writer of a base: its slips, and p(code) per problem (None: per template)."""

    slips: Slips
    code_probability: float | None


BASES = {
    "code-helps": CorpusConfig(DEFAULT_SLIPS, STYLE_CODE_PROBABILITY),
    "code-hurts": CorpusConfig(Slips(random=DEFAULT_SLIPS.random, language_carry=0.0,
                                     code_carry=DEFAULT_SLIPS.language_carry), STYLE_CODE_PROBABILITY),
    "no-code": CorpusConfig(DEFAULT_SLIPS, 0.0),
    "template": CorpusConfig(DEFAULT_SLIPS, None),
}


@dataclass(frozen=True)
class PretrainConfig:
    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    weight_decay: float = 0.1
    tokenizer_texts: int = 3000


def pretrain_base(problems: list[Problem], size: str, corpus: CorpusConfig, settings: PretrainConfig, seed: int,
                  folder: Path, device: torch.device, progress: bool) -> Path:
    """Train the tokenizer and the base model on traces of `problems`; save both (bf16) into `folder`."""
    rng = random.Random(seed)
    tokenizer_texts = [format_prompt(p.text) + corpus_trace(p, rng, corpus.slips, corpus.code_probability)[1]
                       for p in rng.choices(problems, k=settings.tokenizer_texts)]
    shape = MODEL_SHAPES[size]
    tokenizer = train_tokenizer(tokenizer_texts, shape.vocab_size)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(qwen2_config(shape, tokenizer.eos_token_id, tokenizer.pad_token_id)).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay,
                                  betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, settings.steps, settings.warmup_steps))
    bar = tqdm(range(settings.steps), desc="pretrain base", disable=not progress)
    for _ in bar:
        batch = rng.choices(problems, k=settings.batch_size)
        traces = [corpus_trace(p, rng, corpus.slips, corpus.code_probability)[1] for p in batch]
        loss = text_loss(model, tokenizer, [format_prompt(p.text) for p in batch], traces, responses_only=False)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return save_checkpoint(model, tokenizer, folder, torch.bfloat16)
