"""The hand-written loop a researcher writes today, the baseline `dynamics diff` must beat.

Loads every safetensors file of both folders with `safetensors.torch.load_file`, then per tensor
(moved to DEVICE): changed = (a.view(int16) != b.view(int16)).sum(), Σ (b − a)², Σ a² in float32.
Prints one JSON line {"changed", "numel", "sum_sq_delta", "sum_sq_a", "torch"}.

    python bench/hand_loop.py A B [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file


def load_folder(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors |= load_file(file)
    return tensors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    tensors_a, tensors_b = load_folder(args.a), load_folder(args.b)
    changed = numel = 0
    sum_sq_delta = sum_sq_a = 0.0
    for name, a in tensors_a.items():
        a, b = a.to(args.device), tensors_b[name].to(args.device)
        changed += int((a.view(torch.int16) != b.view(torch.int16)).sum())
        sum_sq_delta += float(((b.float() - a.float()) ** 2).sum())
        sum_sq_a += float((a.float() ** 2).sum())
        numel += a.numel()
    print(json.dumps({"changed": changed, "numel": numel, "sum_sq_delta": sum_sq_delta, "sum_sq_a": sum_sq_a,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
