"""A `Checkpoint` over an in-memory dict, for tests that need no files."""

from __future__ import annotations

from pathlib import Path

import torch

from dynamics.checkpoints.base import Checkpoint, TensorInfo


def memory_checkpoint(tensors: dict[str, torch.Tensor], path: str = "mem") -> Checkpoint:
    infos = {n: TensorInfo(n, t.dtype, tuple(t.shape), Path(path)) for n, t in tensors.items()}
    return Checkpoint(path=Path(path), format="in-memory", tensors=infos, reader=lambda n: tensors[n].clone())
