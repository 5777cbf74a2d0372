"""Pair the tensors of two checkpoints by name; report everything that does not pair."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dynamics.checkpoints.base import Checkpoint, TensorInfo
from dynamics.errors import PairingError
from dynamics.kernels.elementwise_cpu import SUPPORTED_DTYPES


@dataclass(frozen=True)
class TensorPair:
    """One tensor in both checkpoints, compared in `compare_dtype`."""

    name: str
    a: TensorInfo
    b: TensorInfo
    compare_dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return self.a.nbytes + self.b.nbytes


@dataclass(frozen=True)
class Unpaired:
    """Tensors left out of the comparison, and pairs compared in float32 because their dtypes differ
    (`dtype_mismatch`: the upcast is exact, so these are in the numbers)."""

    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    shape_mismatch: list[dict] = field(default_factory=list)
    dtype_mismatch: list[dict] = field(default_factory=list)
    not_float: list[str] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (self.only_a or self.only_b or self.shape_mismatch or self.dtype_mismatch or self.not_float)


def compare_dtype(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    """Dtype both sides are compared in: the common one, else float32, which holds every bf16 and
    fp16 value exactly, so a 16-bit base against fp32 (master) weights counts what changed in fp32,
    ULPs are fp32 ULPs, and the share bf16 storage would hide is computed for the fp32 side."""
    return a if a == b else torch.float32


def pair_tensors(a: Checkpoint, b: Checkpoint, strict: bool = False) -> tuple[list[TensorPair], Unpaired]:
    """Pairs in A's order plus what did not pair. With `strict`, anything unpaired is a PairingError."""
    unpaired = Unpaired(
        only_a=sorted(set(a.tensors) - set(b.tensors)),
        only_b=sorted(set(b.tensors) - set(a.tensors)),
    )
    pairs = []
    for name, info_a in a.tensors.items():
        info_b = b.tensors.get(name)
        if info_b is None:
            continue
        if info_a.shape != info_b.shape:
            unpaired.shape_mismatch.append({"name": name, "shape_a": list(info_a.shape), "shape_b": list(info_b.shape)})
            continue
        if info_a.dtype not in SUPPORTED_DTYPES or info_b.dtype not in SUPPORTED_DTYPES:
            unpaired.not_float.append(name)
            continue
        dtype = compare_dtype(info_a.dtype, info_b.dtype)
        if info_a.dtype != info_b.dtype:
            unpaired.dtype_mismatch.append(
                {"name": name, "dtype_a": _dtype_name(info_a.dtype), "dtype_b": _dtype_name(info_b.dtype),
                 "compared_as": _dtype_name(dtype)}
            )
        pairs.append(TensorPair(name, info_a, info_b, dtype))
    if strict:
        _raise_if_unpaired(a, b, unpaired)
    return pairs, unpaired


def _raise_if_unpaired(a: Checkpoint, b: Checkpoint, unpaired: Unpaired) -> None:
    if unpaired.only_a:
        raise PairingError(f"{b.path}: missing tensor {unpaired.only_a[0]} (present in {a.path}; {len(unpaired.only_a)} missing)")
    if unpaired.only_b:
        raise PairingError(f"{a.path}: missing tensor {unpaired.only_b[0]} (present in {b.path}; {len(unpaired.only_b)} missing)")
    if unpaired.shape_mismatch:
        m = unpaired.shape_mismatch[0]
        raise PairingError(f"{b.path}: tensor {m['name']}: shape {m['shape_b']} differs from {m['shape_a']} in {a.path}")
    if unpaired.dtype_mismatch:
        m = unpaired.dtype_mismatch[0]
        raise PairingError(f"{b.path}: tensor {m['name']}: dtype {m['dtype_b']} differs from {m['dtype_a']} in {a.path}")
    if unpaired.not_float:
        raise PairingError(f"{a.path}: tensor {unpaired.not_float[0]}: not a float32/bf16/fp16 tensor")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
