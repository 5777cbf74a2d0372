"""Batched generation with the model's own `generate` (KV cache) and teacher-forced log-probabilities of responses.

Prompts are left-padded so every response starts at the same column; positions follow the attention mask, as
in `generate`, so a teacher-forced pass sees exactly the positions the sampler saw.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerFast


@dataclass(frozen=True)
class Batch:
    """Prompt + response token ids, left-padded prompts, right-padded responses.

    `response_mask[i, t]` is 1 for response tokens up to and including the first end-of-text token.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_length: int
    response_mask: torch.Tensor

    @property
    def response_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_length:]


def autocast(device: torch.device, bf16: bool | None = None) -> torch.autocast | nullcontext:
    """bf16 autocast (fp32 master weights, bf16 matmuls) when `bf16`, by default on CUDA only; else plain fp32."""
    on = device.type == "cuda" if bf16 is None else bf16
    return torch.autocast(device.type, dtype=torch.bfloat16) if on else nullcontext()


def encode_prompts(tokenizer: PreTrainedTokenizerFast, prompts: list[str], device: torch.device) -> dict:
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    return {k: v.to(device) for k, v in encoded.items() if k in ("input_ids", "attention_mask")}


def response_mask(response_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 up to and including the first eos of each row, 0 after it (all 1 when there is none)."""
    is_eos = (response_ids == eos_token_id).int()
    eos_before = is_eos.cumsum(dim=1) - is_eos
    return (eos_before == 0).long()


@torch.no_grad()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, prompts: list[str], max_new_tokens: int,
             sample: bool, temperature: float = 1.0, bf16: bool | None = None) -> Batch:
    """One response per prompt: greedy (`sample=False`) or sampled at `temperature` with no top-k/top-p cut;
    `bf16` as in `autocast` (default: bf16 autocast on CUDA).

    Sampling draws from torch's global generator: seed it for reproducible runs.
    """
    device = next(model.parameters()).device
    encoded = encode_prompts(tokenizer, prompts, device)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=sample, temperature=temperature if sample else None,
                              top_k=0 if sample else None, top_p=1.0 if sample else None,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    was_training = model.training
    model.eval()
    with autocast(device, bf16):
        output = model.generate(**encoded, generation_config=config)
    model.train(was_training)
    prompt_length = encoded["input_ids"].shape[1]
    responses = output[:, prompt_length:]
    mask = response_mask(responses, tokenizer.eos_token_id)
    attention = torch.cat([encoded["attention_mask"], mask], dim=1)
    return Batch(input_ids=output, attention_mask=attention, prompt_length=prompt_length, response_mask=mask)


def decode_responses(tokenizer: PreTrainedTokenizerFast, batch: Batch) -> list[str]:
    """Response texts without the end-of-text token and padding."""
    rows = []
    for ids, mask in zip(batch.response_ids.tolist(), batch.response_mask.tolist()):
        kept = [t for t, m in zip(ids, mask) if m and t != tokenizer.eos_token_id]
        rows.append(tokenizer.decode(kept))
    return rows


def response_log_softmax(model: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """log π(· | everything before response position t) over the vocabulary, shape (batch, response length,
    vocab), fp32: row t is the distribution the response's token t was drawn from."""
    position_ids = (batch.attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    with autocast(batch.input_ids.device):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=position_ids,
                       use_cache=False).logits
    # The logit at position t predicts token t + 1.
    return F.log_softmax(logits[:, batch.prompt_length - 1:-1].float(), dim=-1)


def gather_tokens(log_softmax: torch.Tensor, batch: Batch) -> torch.Tensor:
    """The response tokens' entries of a `response_log_softmax`, shape (batch, response length)."""
    return log_softmax.gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1)


def token_log_probs(model: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """log π(response token t | everything before it), shape (batch, response length), fp32."""
    return gather_tokens(response_log_softmax(model, batch), batch)
