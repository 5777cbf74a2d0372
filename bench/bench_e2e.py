"""End to end, side by side: `cat`, the hand-written loop, `dynamics diff` and `dynamics series`.

For each model shape (Qwen2.5 0.5B / 1.5B / 7B, synthetic bf16, `bench/synthetic_pair.py`) writes a
base and N steps (each an RL-like change of the one before), then times, each as its own process:
  cat pair        `cat` of base and checkpoint-1 (both checkpoints' files)
  hand loop       bench/hand_loop.py on the same pair (load_file both, .to(device), three reductions)
  diff            `dynamics diff base checkpoint-1 --device DEVICE -q --json …`
  cat run         `cat` of the base and all N steps
  series          `dynamics series RUN --base base --device DEVICE -q --out <fresh folder>` (2N − 1 diffs)
cold (posix_fadvise DONTNEED on every file involved) and warm (one `cat` first). The very first diff
runs with an empty Triton cache (TRITON_CACHE_DIR) and is reported on its own; an untimed diff then fills
the persistent cache, so no other row includes compiling the kernel. Prints the table and
the ratios of the targets of issue 13; the fixed cost is the diff's wall time minus its streaming loop
(`seconds` in its JSON).

    PYTHONPATH=. python bench/bench_e2e.py /scratch/e2e [--models 0.5b 1.5b] [--steps 4] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import MODELS, Timed, cat, drop_cache, dynamics, hand_loop, run_timed, weight_files, write_synthetic


def measure(work: Path, model: str, steps: int, device: str, layers: int | None, first: bool) -> list[tuple]:
    """Rows (model, cache, step, Timed, bytes) for one model shape."""
    root = work / model
    folders = [root / "base", *(root / f"checkpoint-{i}" for i in range(1, steps + 1))]
    if not (folders[-1] / "config.json").exists():
        write_synthetic(root, model, layers, device, steps)
    pair = folders[:2]
    pair_bytes = sum(f.stat().st_size for f in weight_files(pair))
    run_bytes = sum(f.stat().st_size for f in weight_files(folders))
    out = root / "diff.json"

    def diff() -> Timed:
        return dynamics("diff", str(pair[0]), str(pair[1]), "--device", device, "-q", "--json", str(out))

    def series() -> Timed:
        shutil.rmtree(root / "series-out", ignore_errors=True)
        return dynamics("series", str(root), "--base", str(pair[0]), "--device", device, "-q",
                        "--out", str(root / "series-out"))

    rows = []
    if first:
        with tempfile.TemporaryDirectory() as cache:
            os.environ["TRITON_CACHE_DIR"] = cache
            drop_cache(pair)
            rows.append((model, "cold", "diff, first ever (empty Triton cache)", diff(), pair_bytes, None))
            os.environ.pop("TRITON_CACHE_DIR")
        diff()  # untimed: fills the persistent Triton cache, so no timed row below compiles the kernel
    steps_of = [("cat pair", lambda: cat(pair), pair, pair_bytes),
                ("hand loop", lambda: hand_loop(pair[0], pair[1], device), pair, pair_bytes),
                ("diff", diff, pair, pair_bytes),
                ("cat run", lambda: cat(folders), folders, run_bytes),
                ("series", series, folders, run_bytes)]
    for cache in ("cold", "warm"):
        for label, fn, involved, nbytes in steps_of:
            if cache == "cold":
                drop_cache(involved)
            else:
                cat(involved)
            timed = fn()
            loop = json.loads(out.read_text())["seconds"] if label == "diff" else None
            rows.append((model, cache, label, timed, nbytes, loop))
            print(f"{model} {cache} {label}: {timed.seconds:.2f} s", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--layers", type=int, help="fewer layers for a smoke run (default: the model's own)")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    rows = []
    for i, model in enumerate(args.models):
        rows += measure(args.work, model, args.steps, args.device, args.layers, first=i == 0)

    probe = ("import torch, triton; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU', "
             "'torch', torch.__version__, 'triton', triton.__version__)")
    card = run_timed([sys.executable, "-c", probe]).stdout
    print(f"\n{card.strip()}; {os.cpu_count()} cores; {args.steps} steps per series")
    print("| model | cache | step | seconds | GB/s | peak RSS | streaming loop |\n|---|---|---|---|---|---|---|")
    for model, cache, label, timed, nbytes, loop in rows:
        loop_s = "" if loop is None else f"{loop:.2f} s"
        print(f"| {model} | {cache} | {label} | {timed.seconds:.2f} | {nbytes / timed.seconds / 1e9:.2f} | "
              f"{timed.peak_rss_bytes / 2**30:.2f} GiB | {loop_s} |")
    seconds = {(m, c, lbl): t.seconds for m, c, lbl, t, _, _ in rows}
    loops = {(m, c): loop for m, c, lbl, _, _, loop in rows if lbl == "diff"}
    print("\n| model | diff / cat cold (≤ 1.15) | diff / cat warm (≤ 1.3) | hand loop / diff warm (≥ 1.5) | "
          "series / cat run warm (≤ 1.25) | series / cat run cold | fixed cost warm (diff − loop) |")
    print("|---|---|---|---|---|---|---|")
    for model in args.models:
        s = {key[1:]: v for key, v in seconds.items() if key[0] == model}
        print(f"| {model} | {s['cold', 'diff'] / s['cold', 'cat pair']:.2f} | {s['warm', 'diff'] / s['warm', 'cat pair']:.2f} | "
              f"{s['warm', 'hand loop'] / s['warm', 'diff']:.2f} | {s['warm', 'series'] / s['warm', 'cat run']:.2f} | "
              f"{s['cold', 'series'] / s['cold', 'cat run']:.2f} | {s['warm', 'diff'] - loops[model, 'warm']:.2f} s |")


if __name__ == "__main__":
    main()
