"""Benchmark of the matrix pass (`dynamics.geometry`) on every 2-D weight of a Qwen2.5-7B-shaped pair.

Per layer q, o 3584 × 3584; k, v 512 × 3584; gate, up 18944 × 3584; down 3584 × 18944; plus embed and
lm_head 152064 × 3584. W0 is bf16 N(0, 0.02²); W1 = bf16(W0 + δ) with δ an RL-like small update (dense
1.5e-5 noise plus a rank-8 part of the same size; bf16 rounding leaves most elements' bits unchanged). The
pairs of one shape are made on the device and handed to `geometry_stats_batched` together (k = 64), and
the table gives per shape: matrices, seconds, seconds of the three randomized SVDs (W0, W1, Δ; timed
again alone on the same stacks) and their share. Target: under 60 s in all on one H100.

    python bench/bench_geometry.py                                  # 28 layers on cuda
    python bench/bench_geometry.py --layers 1 --device cpu --small  # shrunken shapes, a smoke run
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dynamics import geometry, svd
from dynamics.geometry import (
    RANK_ENERGY_RANKS,
    geometry_stats_batched,
)
from dynamics.svd import gaussian_sketch, randomized_singular_values, randomized_svd

FULL = {"hidden": 3584, "kv": 512, "intermediate": 18944, "vocab": 152064}
SMALL = {"hidden": 512, "kv": 128, "intermediate": 2752, "vocab": 16384}


def model_shapes(sizes: dict[str, int], layers: int) -> dict[str, tuple[tuple[int, int], int]]:
    """Weight kind → (shape, how many) for a Qwen2-style model with untied embeddings."""
    h, kv, inter, vocab = sizes["hidden"], sizes["kv"], sizes["intermediate"], sizes["vocab"]
    return {
        "q_proj, o_proj": ((h, h), 2 * layers),
        "k_proj, v_proj": ((kv, h), 2 * layers),
        "gate_proj, up_proj": ((inter, h), 2 * layers),
        "down_proj": ((h, inter), layers),
        "embed_tokens, lm_head": ((vocab, h), 2),
    }


def make_pair(shape: tuple[int, int], seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, None]:
    g = torch.Generator(device).manual_seed(seed)
    m, n = shape
    w0 = (0.02 * torch.randn(m, n, generator=g, device=device)).to(torch.bfloat16)
    low_rank = torch.randn(m, 8, generator=g, device=device) @ torch.randn(8, n, generator=g, device=device)
    delta = 1.5e-5 * (torch.randn(m, n, generator=g, device=device) + low_rank / math.sqrt(8))
    w1 = (w0.float() + delta).to(torch.bfloat16)
    return w0, w1, None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_svds(pairs: list, k: int, device: torch.device) -> float:
    """Seconds of the randomized SVDs `geometry_stats_batched` runs on these pairs (same stacks, widths)."""
    m, n = pairs[0][0].shape
    full = min(m, n)
    kk, delta_rank = min(k, full), min(max(max(RANK_ENERGY_RANKS), k), full)
    sketch = gaussian_sketch(n, min(kk + svd.OVERSAMPLE, full), 0, device)
    sketch_delta = gaussian_sketch(n, min(delta_rank + svd.OVERSAMPLE, full), 1, device)
    per_stack = max(1, geometry.BATCH_ELEMENTS // (m * n))
    seconds = 0.0
    for start in range(0, len(pairs), per_stack):
        chunk = pairs[start : start + per_stack]
        a = torch.stack([p[0] for p in chunk]).float()
        b = torch.stack([p[1] for p in chunk]).float()
        d = b - a
        sync(device)
        begin = time.perf_counter()
        randomized_svd(a, kk, sketch=sketch)
        randomized_svd(b, kk, sketch=sketch)
        randomized_singular_values(d, delta_rank, sketch=sketch_delta)
        sync(device)
        seconds += time.perf_counter() - begin
        del a, b, d
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help=f"shrunken shapes {SMALL} for a CPU smoke run")
    parser.add_argument("--k", type=int, default=64)
    args = parser.parse_args()
    device = torch.device(args.device)
    shapes = model_shapes(SMALL if args.small else FULL, args.layers)

    # Warm-up: library initialisation (cuSOLVER handles, kernels) is not part of the per-shape times.
    geometry_stats_batched([make_pair((64, 48), 0, device)], k=8)
    sync(device)

    print(f"device {device}, k {args.k}, oversample {svd.OVERSAMPLE}, "
          f"power iterations {geometry.POWER_ITERATIONS}, layers {args.layers}")
    print(f"{'weights':24s} {'shape':>15s} {'count':>5s} {'seconds':>8s} {'ms each':>8s} {'svd s':>7s} "
          f"{'svd %':>6s} {'changed':>8s} {'ρ_k/base':>9s}")
    total = total_svd = 0.0
    for label, (shape, count) in shapes.items():
        pairs = [make_pair(shape, seed, device) for seed in range(count)]
        sync(device)
        begin = time.perf_counter()
        stats = geometry_stats_batched(pairs, k=args.k)
        sync(device)
        seconds = time.perf_counter() - begin
        svd_seconds = time_svds(pairs, args.k, device)
        changed = sum(int((p[0].view(torch.int16) != p[1].view(torch.int16)).sum()) for p in pairs[:1]) / (
            shape[0] * shape[1]
        )
        ratio = stats[0].principal_energy / stats[0].principal_energy_baseline
        total += seconds
        total_svd += svd_seconds
        print(f"{label:24s} {str(shape[0]) + '×' + str(shape[1]):>15s} {count:5d} {seconds:8.2f} "
              f"{1000 * seconds / count:8.1f} {svd_seconds:7.2f} {100 * svd_seconds / seconds:6.1f} "
              f"{changed:8.1%} {ratio:9.2f}")
        del pairs, stats
    print(f"{'total':24s} {'':>15s} {sum(c for _, c in shapes.values()):5d} {total:8.2f} {'':>8s} "
          f"{total_svd:7.2f} {100 * total_svd / total:6.1f}")


if __name__ == "__main__":
    main()
