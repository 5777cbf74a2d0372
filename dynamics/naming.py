"""Layer index and module kind of a tensor, read from its name."""

from __future__ import annotations

import re

MODULE_KINDS: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down", "embed", "lm_head", "norm", "other")
# The attention and MLP projections: the 2-D weights sparse fine-tuning and LoRA target by default.
LINEAR_KINDS: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")

_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")
# First match wins; patterns are tried against the dotted name components.
_KIND_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("lm_head", re.compile(r"(^|\.)(lm_head|embed_out)\.|^output\.")),
    ("norm", re.compile(r"(^|\.)[^.]*(norm|ln_\d*|ln_f)[^.]*\.", re.IGNORECASE)),
    ("embed", re.compile(r"(^|\.)(embed_tokens|wte|wpe|word_embeddings|tok_embeddings|embeddings)\.")),
    ("q", re.compile(r"(^|\.)(q_proj|query|wq)\.")),
    ("k", re.compile(r"(^|\.)(k_proj|key|wk)\.")),
    ("v", re.compile(r"(^|\.)(v_proj|value|wv)\.")),
    ("o", re.compile(r"(^|\.)(o_proj|out_proj|wo|attention\.dense)\.")),
    ("gate", re.compile(r"(^|\.)(gate_proj|w1)\.")),
    ("up", re.compile(r"(^|\.)(up_proj|w3)\.")),
    ("down", re.compile(r"(^|\.)(down_proj|w2)\.")),
)


def layer_index(name: str) -> int | None:
    """Transformer block index in `name` (`model.layers.12.mlp...` → 12), None outside blocks."""
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def module_kind(name: str) -> str:
    """One of MODULE_KINDS: q, k, v, o, gate, up, down, embed, lm_head, norm, other."""
    for kind, pattern in _KIND_PATTERNS:
        if pattern.search(name):
            return kind
    return "other"


def is_projection_weight(name: str, shape: tuple[int, ...]) -> bool:
    """A 2-D weight of one of LINEAR_KINDS (q, k, v, o, gate, up, down)."""
    return len(shape) == 2 and module_kind(name) in LINEAR_KINDS
