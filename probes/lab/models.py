"""Qwen2 model presets for the lab: `tiny` trains on two CPU cores in a minute, `small` (tens of millions of
parameters) on one H100 in a few minutes. Untied embeddings, so embed_tokens and lm_head are separate tensors
in every diff."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import Qwen2Config


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    max_position_embeddings: int


MODEL_SHAPES = {
    "tiny": ModelShape(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=384, max_position_embeddings=192),
    "small": ModelShape(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                        num_key_value_heads=4, vocab_size=1024, max_position_embeddings=192),
}


def qwen2_config(shape: ModelShape, eos_token_id: int, pad_token_id: int) -> Qwen2Config:
    """A Qwen2 config of the given shape (sdpa attention, untied embeddings, no bos token)."""
    return Qwen2Config(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=False,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=None,
        attn_implementation="sdpa",
    )
