"""Open checkpoints lazily: a path becomes a `Checkpoint` of name -> tensor handle."""

from __future__ import annotations

from pathlib import Path

from dynamics.checkpoints.base import Checkpoint, TensorInfo
from dynamics.checkpoints.locate import locate_weights
from dynamics.checkpoints.model_config import drop_tied_lm_head, read_config
from dynamics.checkpoints.names import normalise_pair, strip_wrapper_prefixes
from dynamics.checkpoints.peft_adapter import open_lora_adapter
from dynamics.checkpoints.safetensors_files import open_safetensors_files
from dynamics.checkpoints.torch_files import open_torch_files
from dynamics.errors import CheckpointError

__all__ = ["Checkpoint", "TensorInfo", "normalise_pair", "open_checkpoint"]


def open_checkpoint(path: str | Path, base: Checkpoint | None = None) -> Checkpoint:
    """Open the checkpoint at `path` without reading tensor data.

    Args:
        path: a HF folder (`model.safetensors`, sharded with an index, or `pytorch_model*.bin`), a
            `.safetensors` / `.bin` / `.pt` / `.pth` file, a PEFT LoRA adapter folder, or a trainer
            folder holding exactly one of those up to three levels down.
        base: the checkpoint a PEFT adapter applies to; ignored for everything else.

    Returns:
        A Checkpoint whose names have `module.` / `_orig_mod.` stripped, with config.json read and a
        tied lm_head dropped; for an adapter, the base's names with the LoRA update merged in on read.

    Raises:
        CheckpointError: naming the path or file, for anything missing, corrupt or unsupported.

    Example:
        >>> base = open_checkpoint("runs/base")  # doctest: +SKIP
        >>> tuned = open_checkpoint("runs/lora/checkpoint-500", base=base)  # doctest: +SKIP
        >>> tuned.read("model.layers.0.self_attn.q_proj.weight").dtype  # doctest: +SKIP
        torch.bfloat16
    """
    path = Path(path)
    found = locate_weights(path)
    if found.kind == "lora":
        if base is None:
            raise CheckpointError(f"{found.folder}: is a PEFT adapter; pass a base checkpoint")
        ckpt = open_lora_adapter(path, found.folder, found.files[0], base)
    else:
        opener = open_safetensors_files if found.kind == "safetensors" else open_torch_files
        ckpt = opener(path, found.files)
        strip_wrapper_prefixes(ckpt)
        ckpt.config, config_notes = read_config(found.folder)
        ckpt.notes += config_notes
        drop_tied_lm_head(ckpt)
    ckpt.notes[:0] = found.notes
    return ckpt
