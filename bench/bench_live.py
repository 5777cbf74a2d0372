"""Overhead of `dynamics.live.Monitor` during training: ms per measurement against an AdamW training step.

A Qwen2 of the chosen shape is built from its config (no download) in float32 (master weights) and trained
on random tokens with AdamW (forward/backward under bf16 autocast on CUDA). After warm-up steps, the median
training step is timed without a monitor; then each monitor configuration measures after every step and its
`Monitor.step` time is recorded (median over the measured steps, the first one excluded):
- `bf16`: bf16 snapshots, the storage pass (bitwise sparsity of bf16 saves, norms);
- `masters`: fp32 snapshots, the storage pass and the fp32 pass (hidden by bf16);
- `masters+adam`: as `masters`, plus Adam's v curvature share and momentum cosine from the optimizer state
  and the next-step flip prediction (a bool per weight kept between steps).
Extra device memory is the peak allocated during a measurement over the peak of a training step, plus the
snapshots.

    PYTHONPATH=. python bench/bench_live.py --shapes small 1.5b --out OUT    # GPU (the table in bench/README.md)
    PYTHONPATH=. python bench/bench_live.py --shapes cpu --steps 3           # CPU, a smaller shape
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from dynamics.live import Monitor
from dynamics.live.snapshots import size
from probes.lab.models import MODEL_SHAPES, qwen2_config

# Qwen2.5-1.5B's shape (tied embeddings, as the released model).
SHAPE_1_5B = {"vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                  "num_attention_heads": 12, "num_key_value_heads": 2, "max_position_embeddings": 4096,
                  "tie_word_embeddings": True}
CONFIGS = {"bf16": {"masters": False}, "masters": {"masters": True}, "masters+adam": {"masters": True}}


def build(shape: str) -> Qwen2Config:
    if shape == "1.5b":
        return Qwen2Config(**SHAPE_1_5B, attn_implementation="sdpa")
    return qwen2_config(MODEL_SHAPES["tiny" if shape == "cpu" else shape], eos_token_id=0, pad_token_id=0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(model, optimizer, tokens: torch.Tensor, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        loss = model(input_ids=tokens, labels=tokens).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - start


def bench_shape(shape: str, device: torch.device, steps: int, batch: int, length: int) -> dict:
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(build(shape)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    tokens = torch.randint(0, model.config.vocab_size, (batch, length), device=device)
    for _ in range(2):
        train_step(model, optimizer, tokens, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_times = [train_step(model, optimizer, tokens, device) for _ in range(steps)]
    step_peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    row = {"shape": shape, "parameters": sum(p.numel() for p in model.parameters()), "device": str(device),
           "batch": [batch, length], "train_step_ms": 1e3 * statistics.median(step_times), "monitor": {}}
    for name, options in CONFIGS.items():
        monitor = Monitor(model, every=1, **options)
        measure_times, peaks = [], []
        for _ in range(steps + 1):
            train_step(model, optimizer, tokens, device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            start = time.perf_counter()
            monitor.step(model, optimizer if name.endswith("adam") else None)
            sync(device)
            measure_times.append(time.perf_counter() - start)
            peaks.append(torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0)
        ms = 1e3 * statistics.median(measure_times[1:])
        row["monitor"][name] = {
            "measurement_ms": ms, "share_of_train_step": ms / row["train_step_ms"],
            "snapshot_bytes": monitor.snapshots.nbytes, "placement": monitor.snapshots.placement,
            "transient_peak_over_train_step_bytes": max(0, max(peaks) - step_peak) if device.type == "cuda" else None,
        }
        del monitor
        if device.type == "cuda":
            torch.cuda.empty_cache()
    del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def table(rows: list[dict]) -> str:
    lines = [("| shape | parameters | train step ms | monitor | ms per measurement | share of step | snapshots | "
             "peak over step |"), "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for name, m in row["monitor"].items():
            peak = m["transient_peak_over_train_step_bytes"]
            lines.append(f"| {row['shape']} | {row['parameters'] / 1e6:.1f} M | {row['train_step_ms']:.1f} | {name} | "
                         f"{m['measurement_ms']:.1f} | {m['share_of_train_step']:.1%} | {size(m['snapshot_bytes'])} "
                         f"({m['placement'][0].split(' (')[0]}) | {'–' if peak is None else size(peak)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["small", "1.5b"], choices=["cpu", "small", "1.5b"])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    parser.add_argument("--batch", type=int, default=None, help="sequences per step (default 8 on CUDA, 2 on CPU)")
    parser.add_argument("--length", type=int, default=None, help="tokens per sequence (default 512 on CUDA, 32 on CPU)")
    parser.add_argument("--out", type=Path, help="folder for bench_live.json")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch = args.batch or (8 if device.type == "cuda" else 2)
    length = args.length or (512 if device.type == "cuda" else 32)
    if device.type == "cuda":
        print(torch.cuda.get_device_name(device), torch.__version__)
    rows = [bench_shape(shape, device, args.steps, batch, length) for shape in args.shapes]
    print(table(rows))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_live.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
