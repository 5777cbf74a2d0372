"""Write a synthetic checkpoint pair with Qwen2.5-7B tensor shapes (bf16, sharded safetensors).

A is random N(0, 0.02²); B = A with an RL-like change: per tensor a touched share drawn from
[10%, 60%], touched elements moved by 1 ULP (85%), 2 ULP (10%) or 3–8 ULP (5%), in either direction.
Both folders carry a Qwen2 config.json so transformers can load them.

    python bench/synthetic_pair.py OUT_DIR [--layers 28] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

HIDDEN, INTERMEDIATE, VOCAB, KV = 3584, 18944, 152064, 512
SHARD_BYTES = 4 * 1024**3


def qwen25_7b_shapes(layers: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (HIDDEN,),
            p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN), p + "self_attn.q_proj.bias": (HIDDEN,),
            p + "self_attn.k_proj.weight": (KV, HIDDEN), p + "self_attn.k_proj.bias": (KV,),
            p + "self_attn.v_proj.weight": (KV, HIDDEN), p + "self_attn.v_proj.bias": (KV,),
            p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
            p + "post_attention_layernorm.weight": (HIDDEN,),
            p + "mlp.gate_proj.weight": (INTERMEDIATE, HIDDEN), p + "mlp.up_proj.weight": (INTERMEDIATE, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, INTERMEDIATE),
        }
    shapes |= {"model.norm.weight": (HIDDEN,), "lm_head.weight": (VOCAB, HIDDEN)}
    return shapes


def qwen2_config(layers: int) -> dict:
    return {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE, "num_hidden_layers": layers, "num_attention_heads": 28,
        "num_key_value_heads": 4, "vocab_size": VOCAB, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "hidden_act": "silu",
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


def write_pair(out: Path, layers: int, device: str) -> None:
    gen = torch.Generator(device=device).manual_seed(0)
    shards: list[tuple[dict, dict]] = [({}, {})]
    size = 0
    for name, shape in qwen25_7b_shapes(layers).items():
        a = (torch.randn(shape, generator=gen, device=device) * 0.02).to(torch.bfloat16)
        b = rl_like_change(a, gen)
        if size and size + a.numel() * 2 > SHARD_BYTES:
            shards.append(({}, {}))
            size = 0
        shards[-1][0][name], shards[-1][1][name] = a.cpu(), b.cpu()
        size += a.numel() * 2
    for side, folder in ((0, out / "A"), (1, out / "B")):
        folder.mkdir(parents=True, exist_ok=True)
        weight_map = {}
        for i, shard in enumerate(shards):
            file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard[side], folder / file, metadata={"format": "pt"})
            weight_map |= {name: file for name in shard[side]}
        total = sum(t.numel() * 2 for s in shards for t in s[side].values())
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
        (folder / "config.json").write_text(json.dumps(qwen2_config(layers)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    write_pair(args.out, args.layers, args.device)
