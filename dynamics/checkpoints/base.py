"""`Checkpoint`: a name -> lazy tensor handle map that reads one tensor at a time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass(frozen=True)
class TensorInfo:
    """What is known about a stored tensor without reading it."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    file: Path

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


@dataclass
class Checkpoint:
    """A checkpoint opened lazily: `tensors` describes every tensor, `read(name)` loads one.

    Args:
        path: what the user passed.
        format: a short description of what was opened, e.g. "safetensors, 4 shards in ckpt/hf".
        tensors: name -> TensorInfo, names already normalised.
        reader: name -> CPU tensor (contiguous, stored dtype); raises CheckpointError naming file and tensor.
        notes: human-readable lines about what was done (subfolder chosen, prefixes stripped, ties found).
        tied: names dropped because they alias another tensor (alias -> kept name).
        config: the model's config.json next to the weights (plain JSON), empty when absent.
        locations: name -> (file, absolute byte offset, nbytes) of tensors stored raw in a file
            (safetensors), for readers that copy bytes themselves; other tensors go through `read`.

    Example:
        >>> ckpt = open_checkpoint("runs/base")
        >>> w = ckpt.read("model.layers.0.self_attn.q_proj.weight")
    """

    path: Path
    format: str
    tensors: dict[str, TensorInfo]
    reader: Callable[[str], torch.Tensor]
    notes: list[str] = field(default_factory=list)
    tied: dict[str, str] = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    locations: dict[str, tuple[Path, int, int]] = field(default_factory=dict)

    def read(self, name: str) -> torch.Tensor:
        """Load one tensor to host memory in its stored dtype."""
        return self.reader(name)
