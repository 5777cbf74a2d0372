"""Update masks straight from two checkpoints, one tensor at a time, under any change rule.

`DiffResult.mask(name)` unpacks the bitwise masks a diff kept (`diff(..., save_masks=True)`); a mask
under another rule (|Δ| > τ, the η-rule) needs the tensors again, which is what this module reads.

Example:
    >>> for name, mask in changed_masks("runs/base", "runs/rl", rule=1e-5):  # doctest: +SKIP
    ...     print(name, mask.float().mean())
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from pathlib import Path

import torch

from dynamics.api import open_pair
from dynamics.checkpoints import Checkpoint
from dynamics.devices import resolve_device
from dynamics.errors import PairingError
from dynamics.masks import ChangeRule, changed_mask
from dynamics.pipeline import stream_pairs


def changed_masks(
    base: str | Path | Checkpoint,
    tuned: str | Path | Checkpoint,
    rule: ChangeRule = "bitwise",
    *,
    names: Collection[str] | None = None,
    device: str = "cpu",
) -> Iterator[tuple[str, torch.Tensor]]:
    """(tensor name, bool mask of `rule`'s changed elements) for every paired tensor (or only `names`),
    in the base's order, through `open_pair` (adapters merged, names normalised). Memory: one pair.
    A name in `names` that does not pair is a PairingError naming it and the tuned checkpoint."""
    ckpt_a, ckpt_b, pairs, _ = open_pair(base, tuned)
    if names is not None:
        wanted = set(names)
        missing = sorted(wanted - {p.name for p in pairs})
        if missing:
            raise PairingError(f"{ckpt_b.path}: tensor {missing[0]} does not pair with {ckpt_a.path}")
        pairs = [p for p in pairs if p.name in wanted]
    for loaded in stream_pairs(ckpt_a, ckpt_b, pairs, resolve_device(device)):
        yield loaded.pair.name, changed_mask(loaded.a, loaded.b, rule)
