"""Open checkpoints lazily: a path becomes a `Checkpoint` of name -> tensor handle."""

from __future__ import annotations

from pathlib import Path

from dynamics.checkpoints.base import Checkpoint, TensorInfo
from dynamics.checkpoints.deepspeed_zero import open_deepspeed
from dynamics.checkpoints.locate import locate_weights
from dynamics.checkpoints.model_config import drop_tied_lm_head, read_config
from dynamics.checkpoints.names import normalise_pair, strip_wrapper_prefixes
from dynamics.checkpoints.peft_adapter import open_lora_adapter
from dynamics.checkpoints.safetensors_files import open_safetensors_files
from dynamics.checkpoints.torch_dcp import open_dcp_folder
from dynamics.checkpoints.torch_files import open_torch_files
from dynamics.checkpoints.verl_fsdp import open_verl_shards
from dynamics.errors import CheckpointError

__all__ = ["Checkpoint", "TensorInfo", "normalise_pair", "open_checkpoint"]


def open_checkpoint(
    path: str | Path, base: Checkpoint | None = None, *, component: str | None = None, masters: bool = False
) -> Checkpoint:
    """Open the checkpoint at `path` without reading tensor data.

    Args:
        path: a HF folder (`model.safetensors`, sharded with an index, or `pytorch_model*.bin`), a
            `.safetensors` / `.bin` / `.pt` / `.pth` file, a PEFT LoRA adapter folder, a verl FSDP
            folder (`model_world_size_W_rank_R.pt`, or a `global_step_N` holding `actor/`, `critic/`),
            a DeepSpeed ZeRO folder (or the folder whose `latest` names it), a torch DCP folder
            (`.metadata`), a Megatron torch_dist `iter_NNNNNNN`, or a trainer folder holding exactly
            one of those up to three levels down.
        base: the checkpoint a PEFT adapter applies to; ignored for everything else.
        component: the verl component of a step folder (default "actor"), e.g. "critic".
        masters: where a checkpoint holds fp32 master weights beside its stored 16-bit weights
            (DeepSpeed ZeRO-1/2 optimizer states, Megatron `fp32_param`), read the masters; the
            notes say which were read. ZeRO-3 stores only the masters, so they are read anyway.

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
    found = locate_weights(path, component=component, masters=masters)
    if found.kind == "lora":
        if base is None:
            raise CheckpointError(f"{found.folder}: is a PEFT adapter; pass a base checkpoint")
        ckpt = open_lora_adapter(path, found.folder, found.files[0], base)
    else:
        if found.kind == "deepspeed":
            ckpt = open_deepspeed(path, found.folder, masters=masters)
        elif found.kind == "dcp":
            ckpt = open_dcp_folder(path, found.folder, masters=masters)
        elif found.kind == "verl":
            ckpt = open_verl_shards(path, found.files)
        else:
            opener = open_safetensors_files if found.kind == "safetensors" else open_torch_files
            ckpt = opener(path, found.files)
        strip_wrapper_prefixes(ckpt)
        ckpt.config, config_notes = read_config(_config_folder(found.folder))
        ckpt.notes += config_notes
        drop_tied_lm_head(ckpt)
    ckpt.notes[:0] = found.notes
    return ckpt


def _config_folder(folder: Path) -> Path:
    """Where config.json is: beside the weights, or in verl's `huggingface/`, or one level up
    (a DeepSpeed tag folder inside an HF Trainer checkpoint)."""
    for candidate in (folder, folder / "huggingface", folder.parent):
        if (candidate / "config.json").is_file():
            return candidate
    return folder
