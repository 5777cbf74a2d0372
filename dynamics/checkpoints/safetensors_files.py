"""Safetensors files opened lazily: the header is checked by hand, tensors come through `safe_open`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from dynamics.checkpoints.base import Checkpoint, TensorInfo
from dynamics.errors import CheckpointError

# Numeric dtypes only: BOOL, complex and unknown codes are skipped with a note.
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16, "U8": torch.uint8,
}


def read_header(file: Path) -> tuple[dict[str, dict], int]:
    """Parse and check the header of `file`: (name -> {dtype, shape, data_offsets}, data start byte).

    Checks what a truncated or corrupt file breaks: the 8-byte little-endian header length fits the
    file, the header is a JSON object, every data range lies inside the file and matches its shape.
    `__metadata__` is left out.
    """
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            prefix = f.read(8)
            header_len = int.from_bytes(prefix, "little")
            raw = f.read(header_len) if len(prefix) == 8 and header_len <= size - 8 else b""
    except OSError as e:
        raise CheckpointError(f"{file}: {e.strerror or e}") from e
    if len(prefix) < 8:
        raise CheckpointError(f"{file}: not a safetensors file ({size} bytes, no header length)")
    if header_len > size - 8:
        raise CheckpointError(f"{file}: header length {header_len} exceeds the file size {size} (truncated?)")
    try:
        header = json.loads(raw)
    except ValueError as e:
        raise CheckpointError(f"{file}: bad safetensors header: {e}") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{file}: bad safetensors header: not a JSON object")
    header.pop("__metadata__", None)
    for name, entry in header.items():
        _check_entry(file, name, entry, data_bytes=size - 8 - header_len)
    return header, 8 + header_len


def _check_entry(file: Path, name: str, entry: object, data_bytes: int) -> None:
    try:
        dtype_code, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        valid = (
            isinstance(dtype_code, str)
            and all(isinstance(s, int) and s >= 0 for s in shape)
            and isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end
        )
    except (KeyError, TypeError, ValueError):
        valid = False
    if not valid:
        raise CheckpointError(f"{file}: {name}: bad safetensors header entry {entry!r}")
    if end > data_bytes:
        raise CheckpointError(
            f"{file}: {name}: data ends at byte {end}, past the {data_bytes} data bytes in the file (truncated?)"
        )
    dtype = DTYPES.get(dtype_code)
    numel = 1
    for s in shape:
        numel *= s
    if dtype is not None and end - begin != numel * dtype.itemsize:
        raise CheckpointError(f"{file}: {name}: {end - begin} data bytes do not hold shape {shape} of {dtype_code}")


def open_safetensors_files(path: Path, files: Sequence[Path]) -> Checkpoint:
    """Open safetensors `files` (one file or the shards of one model) without reading tensor data.

    Handles stay open; `read(name)` returns an owned copy, because `safe_open` hands out tensors
    backed by a private memory map that later reads of the same handle would see modified.
    """
    tensors: dict[str, TensorInfo] = {}
    locations: dict[str, tuple[Path, int, int]] = {}
    file_of: dict[str, Path] = {}
    handles: dict[Path, safe_open] = {}
    skipped: list[str] = []
    for file in files:
        header, data_start = read_header(file)
        try:
            handles[file] = safe_open(str(file), framework="pt")
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{file}: {e}") from e
        for name, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            if name in file_of:
                raise CheckpointError(f"{file}: tensor {name} is also in {file_of[name]}")
            dtype = DTYPES.get(entry["dtype"])
            if dtype is None:
                skipped.append(f"{name} ({entry['dtype']})")
                continue
            begin, end = entry["data_offsets"]
            file_of[name] = file
            tensors[name] = TensorInfo(name, dtype, tuple(entry["shape"]), file)
            locations[name] = (file, data_start + begin, end - begin)

    def read(name: str) -> torch.Tensor:
        file = file_of.get(name)
        if file is None:
            raise CheckpointError(f"{path}: no tensor named {name}")
        try:
            return handles[file].get_tensor(name).clone(memory_format=torch.contiguous_format)
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{file}: {name}: {e}") from e

    notes = [f"skipped {len(skipped)} non-numeric tensors: {', '.join(skipped)}"] if skipped else []
    return Checkpoint(path, _describe(files), tensors, read, notes=notes, locations=locations)


def _describe(files: Sequence[Path]) -> str:
    if len(files) == 1:
        return f"safetensors {files[0]}"
    return f"safetensors ({len(files)} shards) in {files[0].parent}"
