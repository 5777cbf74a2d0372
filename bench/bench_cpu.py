"""`dynamics diff --device cpu` against `cat` and the hand-written loop, on a CPU machine.

Writes a synthetic Qwen2.5-shaped bf16 pair (default 0.5B: 2 × 0.99 GB; `--layers` for a smaller
one), then times, each as its own process and with identical counts checked:
  cat             `cat` both checkpoints' files to /dev/null
  hand loop       bench/hand_loop.py: load_file both, three torch reductions per tensor
  dynamics diff   `dynamics diff A B --device cpu -q --json …` (every ElementStats counter)
warm (files in the page cache after one `cat`) and, with --cold, after posix_fadvise DONTNEED.

    PYTHONPATH=. python bench/bench_cpu.py /tmp/cpu-pair [--model 0.5b] [--layers 24] [--cold]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import MODELS, Timed, cat, drop_cache, dynamics, hand_loop, weight_files, write_synthetic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--model", choices=MODELS, default="0.5b")
    parser.add_argument("--layers", type=int, help="default: the model's own")
    parser.add_argument("--cold", action="store_true", help="also time each step with the files dropped from cache")
    args = parser.parse_args()
    a, b = args.work / "A", args.work / "B"
    if not (b / "config.json").exists():
        write_synthetic(args.work, args.model, args.layers, "cpu")
    total = sum(f.stat().st_size for f in weight_files([a, b]))
    out = args.work / "diff.json"
    steps = {
        "cat both files": lambda: cat([a, b]),
        "hand-written loop": lambda: hand_loop(a, b, "cpu"),
        "dynamics diff --device cpu": lambda: dynamics("diff", str(a), str(b), "--device", "cpu", "-q",
                                                       "--json", str(out)),
    }
    rows: list[tuple[str, str, Timed]] = []
    for cache in ("cold", "warm") if args.cold else ("warm",):
        for label, fn in steps.items():
            if cache == "cold":
                drop_cache([a, b])
            else:
                cat([a, b])
            timed = fn()
            rows.append((cache, label, timed))
            print(f"{cache} {label}: {timed.seconds:.2f} s", flush=True)
            if label == "hand-written loop":
                hand = json.loads(timed.stdout.strip().splitlines()[-1])
    summary = json.loads(out.read_text())["summary"]
    assert summary["changed"] == hand["changed"], (summary["changed"], hand["changed"])

    cores = os.cpu_count()
    print(f"\nCPU, {cores} cores, torch {hand['torch']}, load average {os.getloadavg()[0]:.1f} at the end; "
          f"{args.model} shape, {total / 1e9:.2f} GB in both files; changed {hand['changed']} of {hand['numel']} "
          "(identical in the hand loop and dynamics)")
    print("| cache | step | seconds | GB/s | × cat | × hand loop | peak RSS |\n|---|---|---|---|---|---|---|")
    for cache, label, timed in rows:
        base = {lbl: t.seconds for c, lbl, t in rows if c == cache}
        print(f"| {cache} | {label} | {timed.seconds:.2f} | {total / timed.seconds / 1e9:.2f} | "
              f"{timed.seconds / base['cat both files']:.2f} | {timed.seconds / base['hand-written loop']:.2f} | "
              f"{timed.peak_rss_bytes / 2**30:.2f} GiB |")


if __name__ == "__main__":
    main()
