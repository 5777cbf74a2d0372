"""Benchmark of the fused elementwise kernel on the GPU (Qwen2.5-7B shapes, RL-like updates).

Measures (1) device-to-device copy bandwidth (bytes read + written), (2) the kernel alone:
bytes read (2 × nbytes) over the median time, as GB/s and % of the copy bandwidth, for bf16 and
float32 pairs, (3) the CPU twin's multi-pass torch run on the GPU, and (4) a cost breakdown
and a few launch configurations. Checks the
kernel against the multi-pass torch result on every bf16 shape first.

Usage (repository root on PYTHONPATH):  python bench/bench_kernel.py [--out DIR] [--quick]
    [--dtypes bfloat16,float32] [--shapes q_proj,gate_proj] [--variants default,"tile 256 B"]
    [--no-multipass]   (the last four narrow a run to fit a short device lease)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import triton
import triton.testing

import dynamics.kernels.elementwise_cpu as cpu_twin
from dynamics.kernels.elementwise_triton import (
    DEFAULT_CONFIG,
    KernelConfig,
    element_stats_triton,
    launch_element_stats,
)

HIDDEN, INTER, VOCAB, KV = 3584, 18944, 152064, 512
SHAPES = {
    "embed": (VOCAB, HIDDEN),
    "q_proj": (HIDDEN, HIDDEN),
    "k_proj": (KV, HIDDEN),
    "v_proj": (KV, HIDDEN),
    "o_proj": (HIDDEN, HIDDEN),
    "gate_proj": (INTER, HIDDEN),
    "up_proj": (INTER, HIDDEN),
    "down_proj": (HIDDEN, INTER),
    "norm": (HIDDEN,),
}
ROTATION_BYTES = 256 << 20  # rotate input sets until this much is touched: no L2 hits
INTS = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}


MAX_FINITE_MAGNITUDE = {torch.bfloat16: 0x7F7F, torch.float16: 0x7BFF, torch.float32: 0x7F7FFFFF}


def rl_pair(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """W0 ~ N(0, 0.02²); 10–60% of the elements move, in magnitude: 80% by ±1 ULP, 16% by ±2–8,
    3% toward zero by 9–4000 ULPs, 1% change sign (the same recipe as tests/test_kernels.py)."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    a = (torch.randn(shape, device="cuda", generator=gen) * 0.02).to(dtype)
    fraction = 0.1 + 0.5 * torch.rand((), device="cuda", generator=gen)
    ints, wide = INTS[dtype], (torch.int64 if dtype == torch.float32 else torch.int32)
    bits = a.view(ints).to(wide)
    sign_bit = 1 << (8 * a.element_size() - 1)
    pick = torch.rand(shape, device="cuda", generator=gen)
    step = torch.where(pick < 0.8, 1, torch.randint(2, 9, shape, device="cuda", generator=gen, dtype=wide))
    step *= torch.randint(0, 2, shape, device="cuda", generator=gen, dtype=wide) * 2 - 1
    step = torch.where(pick > 0.96, -torch.randint(9, 4000, shape, device="cuda", generator=gen, dtype=wide), step)
    moved = (bits & sign_bit) | ((bits & (sign_bit - 1)) + step).clamp_(0, MAX_FINITE_MAGNITUDE[dtype])
    del step
    new = torch.where(pick > 0.99, bits ^ sign_bit, moved)
    del moved
    new = torch.where(torch.rand(shape, device="cuda", generator=gen) < fraction, new, bits)
    b = torch.where(new >= sign_bit, new - 2 * sign_bit, new).to(ints).view(dtype)
    return a, b


def copy_bandwidth(nbytes: int = 2 << 30) -> float:
    """Device-to-device copy, bytes read + written per second (median of do_bench)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=400, return_mode="median")
    return 2 * nbytes / (ms * 1e-3)


def graph_ms(calls: list, replays: int = 15) -> float:
    """Median per-call time of `calls` captured in one CUDA graph (no host launch overhead)."""
    for call in calls:
        call()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / len(calls))
    return statistics.median(times)


def kernel_rate(sets: list[tuple[torch.Tensor, torch.Tensor]], config: KernelConfig) -> dict:
    """GB/s of the kernel alone over the rotating input sets: CUDA-graph replay and do_bench."""
    pair_bytes = 2 * sets[0][0].numel() * sets[0][0].element_size()
    calls = [lambda a=a, b=b: launch_element_stats(a, b, config) for a, b in sets]
    calls = calls * max(1, -(-4 // len(calls)))
    g_ms = graph_ms(calls)
    turn = [0]

    def one():
        a, b = sets[turn[0] % len(sets)]
        turn[0] += 1
        launch_element_stats(a, b, config)

    d_ms = triton.testing.do_bench(one, warmup=25, rep=200, return_mode="median")
    return {"graph_ms": g_ms, "do_bench_ms": d_ms, "graph_GBps": pair_bytes / g_ms / 1e6,
            "do_bench_GBps": pair_bytes / d_ms / 1e6, "pair_bytes": pair_bytes}


def make_sets(shape, dtype, seed) -> list[tuple[torch.Tensor, torch.Tensor]]:
    one = rl_pair(shape, dtype, seed)
    pair_bytes = 2 * one[0].numel() * one[0].element_size()
    n = min(64, max(1, -(-ROTATION_BYTES // pair_bytes)))
    return [one] + [(one[0].roll(i), one[1].roll(i)) for i in range(1, n)]


def multipass_ms(a: torch.Tensor, b: torch.Tensor, reps: int = 2) -> float:
    """The CPU twin's torch code on GPU tensors (chunks of 2^26 elements), wall clock."""
    cpu_twin.element_stats_cpu(a, b)
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        cpu_twin.element_stats_cpu(a, b)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="fewer shapes and variants")
    parser.add_argument("--dtypes", default="bfloat16,float32", help="comma list of dtypes for the shape table")
    parser.add_argument("--shapes", default=None, help="comma list of SHAPES keys (overrides --quick's)")
    parser.add_argument("--variants", default=None, help="comma list of variant labels to run (default: all)")
    parser.add_argument("--no-multipass", action="store_true", help="skip the multi-pass torch baseline")
    args = parser.parse_args()
    dtypes = [getattr(torch, name) for name in args.dtypes.split(",")]
    only_variants = None if args.variants is None else set(args.variants.split(","))
    torch.backends.cuda.matmul.allow_tf32 = False
    cpu_twin.CHUNK_ELEMENTS = 1 << 26
    props = torch.cuda.get_device_properties(0)
    log = {"device": props.name, "sms": props.multi_processor_count, "torch": torch.__version__,
           "triton": triton.__version__, "default_config": dataclasses.asdict(DEFAULT_CONFIG)}
    print(f"device {props.name}, {props.multi_processor_count} SMs, torch {torch.__version__}, triton {triton.__version__}", flush=True)

    copy = copy_bandwidth()
    log["copy_GBps"] = copy / 1e9
    print(f"copy bandwidth (read+write): {copy / 1e9:.0f} GB/s", flush=True)

    names = args.shapes.split(",") if args.shapes else (["q_proj", "gate_proj", "norm"] if args.quick else SHAPES)
    shapes = {k: SHAPES[k] for k in names}
    rows = []
    for dtype in dtypes:
        for name, shape in shapes.items():
            sets = make_sets(shape, dtype, seed=len(rows))
            a, b = sets[0]
            check = ""
            if dtype == torch.bfloat16:
                got, want = element_stats_triton(a, b), cpu_twin.element_stats_cpu(a, b)
                same = all(getattr(got, f) == getattr(want, f) for f in
                           ("changed", "ulp_histogram", "within_abs", "within_rel", "max_abs_delta", "unchanged_rows", "unchanged_cols"))
                check = "exact" if same else "MISMATCH"
                if not same:
                    print("MISMATCH", name, got, want, flush=True)
            rate = kernel_rate(sets, DEFAULT_CONFIG)
            mp = (multipass_ms(a, b) if name in ("q_proj", "k_proj", "gate_proj", "down_proj")
                  and not args.no_multipass else None)
            row = {"dtype": str(dtype).replace("torch.", ""), "tensor": name, "shape": list(shape),
                   "changed_frac": float((a.view(INTS[dtype]) != b.view(INTS[dtype])).float().mean()),
                   **rate, "pct_copy": 100 * rate["graph_GBps"] * 1e9 / copy,
                   "multipass_ms": mp, "check": check}
            rows.append(row)
            print(f"{row['dtype']:9s} {name:10s} {shape!s:16s} graph {rate['graph_ms'] * 1e3:9.1f} us "
                  f"{rate['graph_GBps']:7.0f} GB/s ({row['pct_copy']:5.1f}% of copy)  do_bench {rate['do_bench_GBps']:7.0f} GB/s"
                  + (f"  multipass {mp:8.2f} ms ({row['pair_bytes'] / mp / 1e6:6.0f} GB/s)" if mp else "")
                  + f"  {check}", flush=True)
            del sets, a, b
            torch.cuda.empty_cache()
    log["shapes"] = rows

    # Launch configurations on one large tensor.
    variants = []
    configs = [("default", DEFAULT_CONFIG),
               ("tile 256 B", dataclasses.replace(DEFAULT_CONFIG, tile_bytes=256)),
               ("group 8", dataclasses.replace(DEFAULT_CONFIG, group=8))]
    for dtype in (torch.bfloat16, torch.float32, torch.float16):
        if str(dtype).replace("torch.", "") not in args.dtypes.split(","):
            continue
        sets = make_sets(SHAPES["gate_proj"], dtype, seed=5)
        for label, cfg in configs:
            if only_variants is not None and label not in only_variants:
                continue
            if args.quick and label.startswith("tile"):
                continue
            if dtype == torch.bfloat16 and label == "max 128 registers":
                continue
            if dtype == torch.float32 and label not in ("default", "loads+changed+sums only", "max 128 registers"):
                continue
            if dtype == torch.float16 and label != "default":
                continue
            rate = kernel_rate(sets, cfg)
            variants.append({"dtype": str(dtype).replace("torch.", ""), "variant": label, **rate,
                             "pct_copy": 100 * rate["graph_GBps"] * 1e9 / copy})
            print(f"variant {variants[-1]['dtype']:9s} {label:26s} {rate['graph_GBps']:7.0f} GB/s "
                  f"({variants[-1]['pct_copy']:5.1f}% of copy)", flush=True)
        del sets
        torch.cuda.empty_cache()
    log["variants"] = variants

    for dtype_name in ("bfloat16", "float32"):
        sel = [r for r in rows if r["dtype"] == dtype_name and r["tensor"] != "norm"]
        if not sel:
            continue
        total_bytes = sum(r["pair_bytes"] for r in sel)
        total_ms = sum(r["graph_ms"] for r in sel)
        log[f"aggregate_{dtype_name}_GBps"] = total_bytes / total_ms / 1e6
    print("\n| dtype | tensor | shape | changed | kernel GB/s | % of copy | do_bench GB/s | multi-pass torch GB/s | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mp = r["multipass_ms"]
        mp_rate = f"{r['pair_bytes'] / mp / 1e6:.0f}" if mp else "–"
        speed = f"{mp / r['graph_ms']:.0f}×" if mp else "–"
        print(f"| {r['dtype']} | {r['tensor']} | {'×'.join(map(str, r['shape']))} | {100 * r['changed_frac']:.0f}% | "
              f"{r['graph_GBps']:.0f} | {r['pct_copy']:.0f}% | {r['do_bench_GBps']:.0f} | {mp_rate} | {speed} |")
    for dtype_name in ("bfloat16", "float32"):
        if f"aggregate_{dtype_name}_GBps" not in log:
            continue
        agg = log[f"aggregate_{dtype_name}_GBps"]
        print(f"aggregate {dtype_name} (each matrix of this run once): {agg:.0f} GB/s = {100 * agg * 1e9 / copy:.0f}% of copy {copy / 1e9:.0f} GB/s")
    from dynamics.kernels.elementwise_triton import _RESIDENT_CACHE

    log["resident_programs"] = {str(k): v for k, v in _RESIDENT_CACHE.items()}
    for key, programs in _RESIDENT_CACHE.items():
        print(f"persistent grid {programs} programs ({programs // props.multi_processor_count}/SM) for {key[1]} tile {key[3]}x{key[4]} {key[2]}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_kernel.json").write_text(json.dumps(log, indent=1))


if __name__ == "__main__":
    sys.exit(main())
