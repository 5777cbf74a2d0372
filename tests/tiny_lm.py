"""Tiny local causal LMs with a locally trained tokenizer, saved as HF folders, for the model-running probes."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from probes.lab.tokenizer import train_tokenizer

TEXTS = ["Question: what is 2 + 3?\nAnswer:\n5", "Question: what is 7 - 4?\nAnswer:\n```python\nprint(7 - 4)\n```",
         "First, I need to add. Finally, the answer is \\boxed{9}."] * 4


def tiny_config(vocab_size: int) -> Qwen2Config:
    return Qwen2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                       tie_word_embeddings=False)


def save_tiny_lm(folder: Path, seed: int = 0, model: Qwen2ForCausalLM | None = None) -> Path:
    """A random tiny Qwen2 (or `model`) plus the tokenizer, saved in `folder` (float32)."""
    tokenizer = train_tokenizer(TEXTS, vocab_size=300)
    if model is None:
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(tiny_config(len(tokenizer)))
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def constant_logits_lm(logits: torch.Tensor) -> Qwen2ForCausalLM:
    """A model whose next-token logits are `logits` at every position, whatever the context: attention and MLP
    outputs are zeroed, every embedding is the same constant vector (RMS-normalised to all ones), and lm_head
    row v is logits[v] / hidden, so logits = lm_head · 1 = `logits`."""
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(tiny_config(len(logits)))
    hidden = model.config.hidden_size
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.fill_(0.5)
        model.lm_head.weight.copy_(logits[:, None].expand(-1, hidden) / hidden)
    return model
