"""One device resolver for the diff, the probes and the lab."""

from __future__ import annotations

import importlib.util

import torch

from dynamics.errors import DynamicsError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def triton_available() -> bool:
    """Whether `import triton` would succeed (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None


def resolve_device(device: str, *, kernels: bool = False) -> torch.device:
    """"auto" → CUDA when a GPU is present (and, with `kernels`, Triton for the fused kernel), else CPU.

    `kernels=True` is the diff's need: its CUDA path is a Triton kernel. "cuda" without a GPU, or
    (with `kernels`) without Triton, is a one-line DynamicsError.
    """
    if device not in DEVICE_CHOICES:
        raise DynamicsError(f"--device {device}: expected auto, cpu or cuda")
    if device == "auto":
        usable = torch.cuda.is_available() and (triton_available() or not kernels)
        return torch.device("cuda" if usable else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise DynamicsError("--device cuda: no CUDA device is available (use --device cpu)")
    if device == "cuda" and kernels and not triton_available():
        raise DynamicsError("--device cuda: the fused kernel needs Triton (pip install triton), or use --device cpu")
    return torch.device(device)
