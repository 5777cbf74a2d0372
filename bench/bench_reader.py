"""Where a warm diff's streaming loop spends its time: the reader's stages, one at a time, in one process.

On a pair already in the page cache (run `cat` first; the script does), times:
  read            every tensor's bytes read into one reused host buffer (one thread): the page-cache floor
  read ×T         the same bytes split over T threads (is one reader thread the limit?)
  stream          `dynamics.pipeline.stream_pairs` to the device, no kernel, for reader configurations
                  (READERS, STAGE_BYTES, STAGE_SLOTS, AHEAD) set on the module here (the shipped values first)
  diff            `dynamics.api.diff` in-process (stream + kernel + result), shipped configuration
  hand            `safetensors.torch.load_file` of both files and `.to(device)` of every tensor

    PYTHONPATH=. python bench/bench_reader.py /scratch/e2e/1.5b/base /scratch/e2e/1.5b/checkpoint-1 [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import cat

from dynamics import pipeline
from dynamics.api import diff, open_pair


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def read_bytes(locations: list[tuple[Path, int, int]], threads: int) -> float:
    """Seconds to read every (path, offset, nbytes) into a per-thread reused buffer."""
    biggest = max(n for _, _, n in locations)
    buffers = [bytearray(min(biggest, 64 * 1024**2)) for _ in range(threads)]

    def work(index: int) -> None:
        view = memoryview(buffers[index])
        for path, offset, nbytes in locations[index::threads]:
            with open(path, "rb", buffering=0) as f:
                f.seek(offset)
                left = nbytes
                while left:
                    got = f.readinto(view[: min(left, len(view))])
                    left -= got

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, range(threads)))
    return time.perf_counter() - started


def stream_only(a: Path, b: Path, device: torch.device) -> float:
    ckpt_a, ckpt_b, pairs, _ = open_pair(a, b)
    _sync(device)
    started = time.perf_counter()
    for loaded in pipeline.stream_pairs(ckpt_a, ckpt_b, pairs, device):
        del loaded
    _sync(device)
    return time.perf_counter() - started


def hand(a: Path, b: Path, device: torch.device) -> float:
    _sync(device)
    started = time.perf_counter()
    for folder in (a, b):
        for file in sorted(folder.glob("*.safetensors")):
            tensors = {k: v.to(device) for k, v in load_file(file).items()}
            del tensors
    _sync(device)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    cat([args.a, args.b])
    ckpt_a, ckpt_b, pairs, _ = open_pair(args.a, args.b)
    locations = [ck.locations[p.name] for p in pairs for ck in (ckpt_a, ckpt_b)]
    total = sum(n for _, _, n in locations)
    print(f"pair: {len(pairs)} tensors, {total / 1e9:.2f} GB, device {device}")
    diff(args.a, args.b, device=args.device)  # warm-up: CUDA context, kernel cache, allocator

    def row(label: str, seconds: float) -> None:
        print(f"{label:<58} {seconds:7.3f} s  {total / seconds / 1e9:6.2f} GB/s", flush=True)

    for threads in (1, 2, 4, 8):
        row(f"read, {threads} thread(s)", read_bytes(locations, threads))
    shipped = (pipeline.READERS, pipeline.STAGE_BYTES, pipeline.STAGE_SLOTS, pipeline.AHEAD)
    configs = [shipped] + [c for c in ((4, 64 * 2**20, 3, 8), (8, 64 * 2**20, 3, 8), (4, 16 * 2**20, 4, 8),
                                       (8, 256 * 2**20, 2, 8)) if c != shipped]
    for readers, stage, slots, ahead in configs:
        pipeline.READERS, pipeline.STAGE_BYTES, pipeline.STAGE_SLOTS, pipeline.AHEAD = readers, stage, slots, ahead
        row(f"stream readers={readers} stage={stage >> 20} MiB slots={slots} ahead={ahead}",
            stream_only(args.a, args.b, device))
    pipeline.READERS, pipeline.STAGE_BYTES, pipeline.STAGE_SLOTS, pipeline.AHEAD = shipped
    started = time.perf_counter()
    diff(args.a, args.b, device=args.device)
    row("diff in-process (shipped configuration)", time.perf_counter() - started)
    row("hand: load_file + .to(device)", hand(args.a, args.b, device))


if __name__ == "__main__":
    main()
