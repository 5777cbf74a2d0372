"""End-to-end benchmark of `dynamics diff` on a synthetic Qwen2.5-7B-shaped bf16 pair.

Measures, with the page cache of both checkpoints dropped before each (posix_fadvise DONTNEED):
  read     reading both checkpoints once from disk (sequential readinto, 64 MiB blocks)
  diff     `dynamics diff A B --device cuda` as a user runs it (subprocess, imports included); the
           1st run also compiles the Triton kernel's specialisations (empty Triton cache)
  hf-ref   transformers.AutoModelForCausalLM.from_pretrained for both + the same statistics with
           plain PyTorch expressions per tensor on the GPU
and prints a table (seconds, GB/s over the bytes of both checkpoints, ratio to `read`).

    python bench/bench_diff.py WORK_DIR [--layers 28] [--skip-hf]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_pair import write_pair
from timing import drop_cache, weight_files

BLOCK = 64 * 1024**2


def time_read(folders: list[Path]) -> float:
    buffer = bytearray(BLOCK)
    view = memoryview(buffer)
    start = time.perf_counter()
    for file in weight_files(folders):
        with open(file, "rb", buffering=0) as f:
            while f.readinto(view):
                pass
    return time.perf_counter() - start


def time_diff_cli(a: Path, b: Path, out: Path, device: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dynamics.cli", "diff", str(a), str(b), "--device", device, "-q",
                    "--json", str(out / "diff.json")], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def reference_stats(a: torch.Tensor, b: torch.Tensor) -> dict:
    """The headline statistics with plain multi-pass PyTorch expressions (no fused kernel)."""
    bits_a, bits_b = a.view(torch.int16).int(), b.view(torch.int16).int()
    ord_a = torch.where(bits_a < 0, -32768 - bits_a, bits_a)
    ord_b = torch.where(bits_b < 0, -32768 - bits_b, bits_b)
    changed = bits_a != bits_b
    distance = (ord_a - ord_b).abs()[changed]
    delta = b.float() - a.float()
    return {
        "changed": int(changed.sum()),
        "ulp_histogram": torch.bincount(torch.frexp((distance - 1).double())[1].long(), minlength=33).tolist(),
        "within_abs": [int((delta.abs() <= t).sum()) for t in (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3)],
        "sum_sq_delta": float((delta.double() ** 2).sum()),
        "sum_sq_a": float((a.double() ** 2).sum()),
        "sum_sq_b": float((b.double() ** 2).sum()),
        "max_abs_delta": float(delta.abs().max()),
        "unchanged_rows": int((~changed.any(dim=-1)).sum()) if a.dim() == 2 else None,
    }


def time_hf_reference(a: Path, b: Path, device: str) -> float:
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    model_a = AutoModelForCausalLM.from_pretrained(a, dtype=torch.bfloat16)
    model_b = AutoModelForCausalLM.from_pretrained(b, dtype=torch.bfloat16)
    params_b = dict(model_b.named_parameters())
    changed = 0
    for name, pa in model_a.named_parameters():
        changed += reference_stats(pa.data.to(device), params_b[name].data.to(device))["changed"]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--device", default="cuda", help="cpu for a smoke run without a GPU")
    args = parser.parse_args()
    a, b = args.work / "A", args.work / "B"
    if not (a / "config.json").exists():
        start = time.perf_counter()
        write_pair(args.work, args.layers, args.device)
        print(f"wrote synthetic pair in {time.perf_counter() - start:.1f} s", flush=True)
    total = sum(f.stat().st_size for f in weight_files([a, b]))

    rows = []
    for label, fn in (
        ("read both files once", lambda: time_read([a, b])),
        ("dynamics diff (CLI, cold cache, 1st)", lambda: time_diff_cli(a, b, args.work, args.device)),
        ("dynamics diff (CLI, cold cache, 2nd)", lambda: time_diff_cli(a, b, args.work, args.device)),
        ("transformers load + torch stats", None if args.skip_hf else lambda: time_hf_reference(a, b, args.device)),
    ):
        if fn is None:
            continue
        drop_cache([a, b])
        seconds = fn()
        rows.append((label, seconds))
        print(f"{label}: {seconds:.2f} s", flush=True)
    warm_read = time_read([a, b])
    warm = time_diff_cli(a, b, args.work, args.device)
    loop = json.loads((args.work / "diff.json").read_text())["seconds"]

    read_s = rows[0][1]
    card = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"\n{card} — two checkpoints, {total / 1e9:.2f} GB in all")
    print(f"{'step':<36}{'seconds':>9}{'GB/s':>8}{'x read':>8}")
    for label, seconds in rows + [("read both files (warm cache)", warm_read), ("dynamics diff (CLI, warm cache)", warm),
                             ("  of which the streaming loop", loop)]:
        print(f"{label:<36}{seconds:>9.2f}{total / seconds / 1e9:>8.2f}{seconds / read_s:>8.2f}")


if __name__ == "__main__":
    main()
