"""Fused elementwise pass: a Triton kernel on CUDA tensors, its torch twin on CPU tensors."""

from __future__ import annotations

import torch

from dynamics.element_stats import ElementStats
from dynamics.kernels.elementwise_cpu import element_stats_cpu


def element_stats(a: torch.Tensor, b: torch.Tensor) -> ElementStats:
    """`ElementStats` of (W0 = a, W1 = b) on the tensors' device; both twins give the same numbers."""
    if a.is_cuda:
        from dynamics.kernels.elementwise_triton import element_stats_triton

        return element_stats_triton(a, b)
    return element_stats_cpu(a, b)
