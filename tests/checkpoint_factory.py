"""Tiny checkpoints in every format `open_checkpoint` reads, written into a test's tmp folder."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file


def sample_tensors() -> dict[str, torch.Tensor]:
    """A few small tensors covering float and integer dtypes, 1-D, 2-D and a zero-size tensor."""
    g = torch.Generator().manual_seed(0)
    return {
        "model.embed_tokens.weight": torch.randn(16, 8, generator=g),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(12, 8, generator=g).to(torch.bfloat16),
        "model.layers.0.input_layernorm.weight": torch.randn(8, generator=g).to(torch.float16),
        "model.layers.0.mlp.counts": torch.arange(5, dtype=torch.int64),
        "model.empty": torch.zeros(0, 8),
        "lm_head.weight": torch.randn(16, 8, generator=g),
    }


def write_config(folder: Path, **fields: object) -> Path:
    """Write `fields` as `folder/config.json`; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(fields))
    return folder


def write_safetensors(folder: Path, tensors: dict[str, torch.Tensor], shards: int = 1) -> Path:
    """`model.safetensors`, or `shards` files `model-0000i-of-0000n.safetensors` and their index."""
    return _write_hf(folder, tensors, shards, "model.safetensors", lambda part, file: save_file(part, str(file)))


def write_bin(folder: Path, tensors: dict[str, torch.Tensor], shards: int = 1) -> Path:
    """`pytorch_model.bin`, or `shards` files `pytorch_model-0000i-of-0000n.bin` and their index."""
    return _write_hf(folder, tensors, shards, "pytorch_model.bin", torch.save)


def write_torch_file(file: Path, obj: object, legacy: bool = False) -> Path:
    """`torch.save(obj)` to `file`; `legacy` writes the old non-zip format."""
    file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, file, _use_new_zipfile_serialization=not legacy)
    return file


def lora_pair(module: str, out_features: int, in_features: int, r: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float32 LoRA A (r × in) and B (out × r) for `module`, under PEFT's saved key names."""
    g = torch.Generator().manual_seed(seed)
    return {
        f"base_model.model.{module}.lora_A.weight": torch.randn(r, in_features, generator=g),
        f"base_model.model.{module}.lora_B.weight": torch.randn(out_features, r, generator=g),
    }


def write_lora_adapter(
    folder: Path,
    tensors: dict[str, torch.Tensor],
    r: int = 4,
    lora_alpha: float = 8,
    as_bin: bool = False,
    **config: object,
) -> Path:
    """A PEFT LoRA adapter folder: adapter_config.json (peft_type LORA, r, lora_alpha, `config`) and
    `tensors` as adapter_model.safetensors (adapter_model.bin with `as_bin`)."""
    folder.mkdir(parents=True, exist_ok=True)
    fields = {"peft_type": "LORA", "r": r, "lora_alpha": lora_alpha, **config}
    (folder / "adapter_config.json").write_text(json.dumps(fields))
    if as_bin:
        torch.save(tensors, folder / "adapter_model.bin")
    else:
        save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


def _write_hf(
    folder: Path, tensors: dict[str, torch.Tensor], shards: int, filename: str,
    save: Callable[[dict[str, torch.Tensor], Path], None],
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if shards == 1:
        save(tensors, folder / filename)
        return folder
    stem, suffix = filename.split(".", 1)
    names = list(tensors)
    weight_map = {}
    for i in range(shards):
        shard = f"{stem}-{i + 1:05d}-of-{shards:05d}.{suffix}"
        part = {name: tensors[name] for name in names[i::shards]}
        save(part, folder / shard)
        weight_map.update(dict.fromkeys(part, shard))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / f"{filename}.index.json").write_text(json.dumps(index))
    return folder
