"""The model's config.json (plain JSON, never code) and the embedding tie it declares."""

from __future__ import annotations

import json
from pathlib import Path

from dynamics.checkpoints.base import Checkpoint

LM_HEAD = "lm_head.weight"
EMBEDDING_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embed_in.weight")


def read_config(folder: Path) -> tuple[dict, list[str]]:
    """(config.json of `folder` or {}, notes); an unreadable config is noted, not fatal."""
    file = folder / "config.json"
    if not file.is_file():
        return {}, []
    try:
        config = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        return {}, [f"{file}: ignored, not readable JSON ({e})"]
    if not isinstance(config, dict):
        return {}, [f"{file}: ignored, not a JSON object"]
    return config, []


def drop_tied_lm_head(ckpt: Checkpoint) -> None:
    """With `tie_word_embeddings: true`, `lm_head.weight` is the embedding: drop it, record it in `tied`.

    Also when the file leaves it out (transformers saves a tied head once), so that an adapter on
    `lm_head` finds its weight. Nothing happens unless exactly one embedding (of the head's shape) is there.
    """
    if ckpt.config.get("tie_word_embeddings") is not True or LM_HEAD in ckpt.tied:
        return
    head = ckpt.tensors.get(LM_HEAD)
    embeddings = [
        name for name, info in ckpt.tensors.items()
        if name != LM_HEAD and name.endswith(EMBEDDING_SUFFIXES) and (head is None or info.shape == head.shape)
    ]
    if len(embeddings) != 1:
        return
    ckpt.tied[LM_HEAD] = embeddings[0]
    if head is None:
        ckpt.notes.append(f"{LM_HEAD} is tied to {embeddings[0]} (tie_word_embeddings in config.json; not stored)")
        return
    del ckpt.tensors[LM_HEAD]
    ckpt.locations.pop(LM_HEAD, None)
    ckpt.notes.append(f"dropped {LM_HEAD}: tied to {embeddings[0]} (tie_word_embeddings in config.json)")
