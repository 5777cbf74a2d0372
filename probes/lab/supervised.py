"""Cross-entropy on text batches, shared by pretraining (every token) and SFT (response tokens only)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from probes.sampling import autocast


def text_loss(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, prompts: list[str], responses: list[str],
              responses_only: bool) -> torch.Tensor:
    """Mean next-token cross-entropy (nats per token) of `prompt + response + <|endoftext|>`, right-padded.

    With `responses_only` the prompt tokens are context only (SFT); otherwise every token is a target
    (pretraining). The first token of a sequence is never a target.
    """
    device = next(model.parameters()).device
    eos = tokenizer.eos_token
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer([p + r + eos for p, r in zip(prompts, responses)], add_special_tokens=False)["input_ids"]
    length = max(len(ids) for ids in full_ids)
    input_ids = torch.full((len(full_ids), length), tokenizer.pad_token_id, dtype=torch.long)
    targets = torch.full((len(full_ids), length), -100, dtype=torch.long)
    for row, (ids, prompt) in enumerate(zip(full_ids, prompt_ids)):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        first_target = len(prompt) if responses_only else 1
        targets[row, first_target:len(ids)] = torch.tensor(ids[first_target:])
    attention_mask = torch.arange(length) < torch.tensor([len(ids) for ids in full_ids])[:, None]
    input_ids, targets, attention_mask = input_ids.to(device), targets.to(device), attention_mask.long().to(device)
    with autocast(device):
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets[:, 1:].reshape(-1),
                           ignore_index=-100)


def warmup_cosine(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate factor: linear warmup to 1 over `warmup_steps`, then cosine decay to 0 at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    fraction = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, fraction)))
