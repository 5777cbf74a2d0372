"""Write a synthetic checkpoint pair with Qwen2.5 tensor shapes (bf16, sharded safetensors).

A is random N(0, 0.02²); B = A with an RL-like change: per tensor a touched share drawn from
[10%, 60%], touched elements moved by 1 ULP (85%), 2 ULP (10%) or 3–8 ULP (5%), in either direction.
Both folders carry a Qwen2 config.json so transformers can load them. `write_run` writes a base and
N steps, each an RL-like change of the one before (`checkpoint-1` … `checkpoint-N`).

    python bench/synthetic_pair.py OUT_DIR [--model 7b|1.5b|0.5b] [--layers 28] [--steps N] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

HIDDEN, INTERMEDIATE, VOCAB, KV = 3584, 18944, 152064, 512
SHARD_BYTES = 4 * 1024**3
# Qwen2.5 sizes: hidden, intermediate, vocabulary, k/v width, layers, heads, kv heads, tied embeddings
MODELS = {
    "0.5b": (896, 4864, 151936, 128, 24, 14, 2, True),
    "1.5b": (1536, 8960, 151936, 256, 28, 12, 2, True),
    "7b": (HIDDEN, INTERMEDIATE, VOCAB, KV, 28, 28, 4, False),
}


def qwen25_shapes(model: str, layers: int | None = None) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a Qwen2.5 model of size `model` (tied models have no lm_head)."""
    hidden, intermediate, vocab, kv, default_layers, _, _, tied = MODELS[model]
    layers = default_layers if layers is None else layers
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (hidden,),
            p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.q_proj.bias": (hidden,),
            p + "self_attn.k_proj.weight": (kv, hidden), p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, hidden), p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (hidden, hidden),
            p + "post_attention_layernorm.weight": (hidden,),
            p + "mlp.gate_proj.weight": (intermediate, hidden), p + "mlp.up_proj.weight": (intermediate, hidden),
            p + "mlp.down_proj.weight": (hidden, intermediate),
        }
    shapes |= {"model.norm.weight": (hidden,)}
    if not tied:
        shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def qwen2_config(layers: int, model: str = "7b") -> dict:
    hidden, intermediate, vocab, _, _, heads, kv_heads, tied = MODELS[model]
    return {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": hidden,
        "intermediate_size": intermediate, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "vocab_size": vocab, "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": tied, "torch_dtype": "bfloat16",
        "hidden_act": "silu",
    }


def rl_like_change(a: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """B = A moved by a few ULPs on a random 10–60% of elements (bits ± k, same sign)."""
    touched_share = 0.1 + 0.5 * torch.rand((), generator=gen, device=a.device).item()
    u = torch.rand(a.shape, generator=gen, device=a.device)
    k = torch.where(u < 0.85, 1, torch.where(u < 0.95, 2, 3 + (u * 1000).long() % 6)).to(torch.int16)
    sign = torch.where(torch.rand(a.shape, generator=gen, device=a.device) < 0.5, 1, -1).to(torch.int16)
    touched = torch.rand(a.shape, generator=gen, device=a.device) < touched_share
    bits = a.view(torch.int16)
    magnitude = bits & 0x7FFF
    safe = touched & (magnitude > 8) & (magnitude < 0x7F70)
    return torch.where(safe, bits + sign * k, bits).view(torch.bfloat16)


def write_pair(out: Path, layers: int | None, device: str, model: str = "7b") -> None:
    """OUT/A (random) and OUT/B (an RL-like change of A)."""
    write_run(out, layers, device, model, steps=1, names=("A", "B"))


def write_run(out: Path, layers: int | None, device: str, model: str, steps: int,
              names: tuple[str, ...] | None = None) -> list[Path]:
    """A base and `steps` checkpoints, each an RL-like change of the one before; returns their folders
    (default names `base`, `checkpoint-1` … `checkpoint-N`). Tensors are made one at a time and each
    shard is written as soon as it is complete, so host memory holds one shard per checkpoint."""
    layers = MODELS[model][4] if layers is None else layers
    names = names or ("base", *(f"checkpoint-{i}" for i in range(1, steps + 1)))
    shapes = qwen25_shapes(model, layers)
    shard_of, size = {}, 0
    for name, shape in shapes.items():
        nbytes = 2 * math.prod(shape)
        shard = max(shard_of.values(), default=0)
        if size and size + nbytes > SHARD_BYTES:
            shard, size = shard + 1, 0
        shard_of[name], size = shard, size + nbytes
    shards = max(shard_of.values()) + 1
    files = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    folders = [out / n for n in names]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.safetensors.index.json").write_text(json.dumps({
            "metadata": {"total_size": sum(2 * math.prod(s) for s in shapes.values())},
            "weight_map": {name: files[shard] for name, shard in shard_of.items()}}))
        (folder / "config.json").write_text(json.dumps(qwen2_config(layers, model)))
    gen = torch.Generator(device=device).manual_seed(0)
    pending: list[dict[str, torch.Tensor]] = [{} for _ in names]
    items = list(shapes.items())
    for i, (name, shape) in enumerate(items):
        t = (torch.randn(shape, generator=gen, device=device) * 0.02).to(torch.bfloat16)
        for side in range(len(names)):
            if side:
                t = rl_like_change(t, gen)
            pending[side][name] = t.cpu()
        if i + 1 == len(items) or shard_of[items[i + 1][0]] != shard_of[name]:
            for folder, tensors in zip(folders, pending):
                save_file(tensors, folder / files[shard_of[name]], metadata={"format": "pt"})
            pending = [{} for _ in names]
    return folders


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", choices=sorted(MODELS), default="7b")
    parser.add_argument("--layers", type=int, help="default: the model's own")
    parser.add_argument("--steps", type=int, help="write a run (base, checkpoint-1..N) instead of A/B")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.steps:
        write_run(args.out, args.layers, args.device, args.model, args.steps)
    else:
        write_pair(args.out, args.layers, args.device, args.model)
