"""Copies of the weights the live monitor compares against: the starting weights and the last measured step.

Each parameter gets two copies (base, previous) in its snapshot dtype. On a CUDA device they stay on the
parameter's device when both copies of that device's parameters fit in half of its free memory (the other
half is left to training: optimizer state and activations may not be allocated yet); otherwise they go to
pinned host memory and are streamed back one tensor at a time. Parameters on the CPU keep CPU copies.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

COPIES = 2  # base and previous
FREE_SHARE = 0.5  # the share of a device's free memory the snapshots may take


@dataclass
class Snapshots:
    """name -> (base, previous) copies; `placement` says where each device's copies live, in words."""

    base: dict[str, torch.Tensor]
    previous: dict[str, torch.Tensor]
    placement: list[str]
    nbytes: int

    @staticmethod
    def take(tensors: dict[str, torch.Tensor], dtypes: dict[str, torch.dtype]) -> Snapshots:
        """Copy every tensor twice in `dtypes[name]` (placement: module docstring)."""
        by_device: dict[torch.device, list[str]] = defaultdict(list)
        for name, t in tensors.items():
            by_device[t.device].append(name)
        base, previous, placement, total = {}, {}, [], 0
        for device, names in by_device.items():
            need = COPIES * sum(tensors[n].numel() * dtypes[n].itemsize for n in names)
            total += need
            target, pinned = device, False
            if device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(device)
                if need > FREE_SHARE * free:
                    target, pinned = torch.device("cpu"), True
                where = (f"on {device} ({size(need)} of {size(free)} free)" if not pinned else
                         f"in pinned host memory ({size(need)}; {device} has {size(free)} free)")
            else:
                where = f"on {device} ({size(need)})"
            placement.append(f"{len(names)} tensors {where}")
            for n in names:
                for copies in (base, previous):
                    copy = torch.empty(tensors[n].shape, dtype=dtypes[n], device=target, pin_memory=pinned)
                    copy.copy_(tensors[n].detach())
                    copies[n] = copy
        return Snapshots(base, previous, placement, total)

    def on(self, name: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(base, previous) of `name` on `device` (a copy when they live in host memory)."""
        a, b = self.base[name], self.previous[name]
        if a.device == device:
            return a, b
        return a.to(device, non_blocking=True), b.to(device, non_blocking=True)

    def keep(self, name: str, live: torch.Tensor) -> None:
        """previous[name] := `live`, cast to the snapshot dtype."""
        self.previous[name].copy_(live, non_blocking=self.previous[name].is_pinned())


def size(nbytes: int) -> str:
    """Bytes in words: "12.0 MiB", "3.41 GiB"."""
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"
