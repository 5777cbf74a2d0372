"""Stream tensors from checkpoints to a device, a few loads ahead of the kernel.

`stream_tensors` runs a list of loads (checkpoint, tensor) on READERS worker threads and yields the
tensors in list order, at most AHEAD loads in flight, so a diff runs at the pace of the slowest stage
(usually the disk) rather than the sum of the stages. On CUDA each worker reads in STAGE_BYTES chunks
into its own small ring of pinned host buffers and copies each chunk to the device without blocking
while it reads the next: pinned memory stays at READERS × STAGE_SLOTS × STAGE_BYTES whatever the
tensor sizes, and device memory holds at most AHEAD loaded tensors beyond what the caller keeps.
On the CPU a worker reads a raw-stored tensor straight into its buffer (`read_host`).
`stream_pairs` is the two-checkpoint case: A's and B's tensor of each pair, read in parallel.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from dynamics.checkpoints.base import Checkpoint, TensorInfo
from dynamics.errors import CheckpointError
from dynamics.pairing import TensorPair

# Measured on an H200 host (bench/bench_reader.py, 7B pair in page cache, bench/README.md): two readers
# streamed 8.9 GB/s, four readers with 16 MiB chunks 13.0 GB/s (one thread reads the page cache at 6.2 GB/s).
STAGE_BYTES = 16 * 1024**2
STAGE_SLOTS = 4
READERS = 4
AHEAD = 8


@dataclass(frozen=True)
class Load:
    """One tensor to read: `name` of `ckpt`, described by `info`."""

    ckpt: Checkpoint
    name: str
    info: TensorInfo


@dataclass
class LoadedPair:
    """A pair on the target device, in its compare dtype, ready for the kernel."""

    pair: TensorPair
    a: torch.Tensor
    b: torch.Tensor


class _Stager:
    """Moves one worker's tensors to the GPU through a ring of pinned chunk buffers on its own stream."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self.slots = [torch.empty(STAGE_BYTES, dtype=torch.uint8, pin_memory=True) for _ in range(STAGE_SLOTS)]
        self.events: list[torch.cuda.Event | None] = [None] * STAGE_SLOTS
        self.turn = 0

    def _slot(self) -> tuple[int, torch.Tensor]:
        index = self.turn % STAGE_SLOTS
        self.turn += 1
        if self.events[index] is not None:
            self.events[index].synchronize()  # its previous chunk has reached the device
        return index, self.slots[index]

    def _send(self, index: int, slot: torch.Tensor, target: torch.Tensor) -> None:
        with torch.cuda.stream(self.stream):
            target.copy_(slot[: target.numel()], non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        self.events[index] = event

    def load(self, load: Load) -> tuple[torch.Tensor, torch.cuda.Event]:
        """Device tensor of the load in its stored dtype, and the event after its last copy."""
        name, info = load.name, load.info
        with torch.cuda.stream(self.stream):
            flat = torch.empty(info.nbytes, dtype=torch.uint8, device=self.device)
        location = load.ckpt.locations.get(name)
        if location is None:
            host = load.ckpt.read(name).reshape(-1).view(torch.uint8)
            for start in range(0, info.nbytes, STAGE_BYTES):
                index, slot = self._slot()
                chunk = host[start: start + STAGE_BYTES]
                slot[: chunk.numel()].copy_(chunk)
                self._send(index, slot, flat[start: start + chunk.numel()])
        else:
            path, offset, nbytes = location
            try:
                with open(path, "rb", buffering=0) as f:
                    f.seek(offset)
                    for start in range(0, nbytes, STAGE_BYTES):
                        index, slot = self._slot()
                        size = min(STAGE_BYTES, nbytes - start)
                        _read_exactly(f, slot[:size], path, name)
                        self._send(index, slot, flat[start: start + size])
            except OSError as e:
                raise CheckpointError(f"{path}: tensor {name}: {e.strerror or e}") from e
        done = torch.cuda.Event()
        done.record(self.stream)
        return flat.view(info.dtype).view(info.shape), done


def read_host(ckpt: Checkpoint, name: str, info: TensorInfo) -> torch.Tensor:
    """Tensor `name` in host memory, stored dtype: a tensor stored raw in a file is read straight into
    its buffer with one sequential `readinto` (one copy out of the page cache); others via `ckpt.read`."""
    location = ckpt.locations.get(name)
    if location is None:
        return ckpt.read(name)
    path, offset, nbytes = location
    flat = torch.empty(nbytes, dtype=torch.uint8)
    try:
        with open(path, "rb", buffering=0) as f:
            f.seek(offset)
            _read_exactly(f, flat, path, name)
    except OSError as e:
        raise CheckpointError(f"{path}: tensor {name}: {e.strerror or e}") from e
    return flat.view(info.dtype).view(info.shape)


def _read_exactly(f, out: torch.Tensor, path, name: str) -> None:
    view = memoryview(out.numpy())
    done = 0
    while done < len(view):
        got = f.readinto(view[done:])
        if not got:
            raise CheckpointError(f"{path}: tensor {name}: file ends before its data")
        done += got


def stream_tensors(loads: Sequence[Load], device: torch.device) -> Iterator[torch.Tensor]:
    """Yield the tensor of every load on `device`, in stored dtype and list order; reader errors are
    re-raised here. Stopping the iteration early waits for the loads in flight and drops them."""
    local = threading.local()

    def run(load: Load) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        if device.type != "cuda":
            return read_host(load.ckpt, load.name, load.info), None
        if not hasattr(local, "stager"):
            local.stager = _Stager(device)
        return local.stager.load(load)

    pending: deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=READERS, thread_name_prefix="dynamics-reader") as pool:
        try:
            upcoming = iter(loads)
            for load in upcoming:
                pending.append(pool.submit(run, load))
                if len(pending) >= AHEAD:
                    break
            while pending:
                tensor, copied = pending.popleft().result()
                for load in upcoming:
                    pending.append(pool.submit(run, load))
                    break
                if copied is not None:
                    current = torch.cuda.current_stream(tensor.device)
                    current.wait_event(copied)
                    tensor.record_stream(current)
                yield tensor
        finally:
            for future in pending:
                future.cancel()


def stream_pairs(a: Checkpoint, b: Checkpoint, pairs: list[TensorPair], device: torch.device) -> Iterator[LoadedPair]:
    """Yield every pair loaded on `device`, in its compare dtype, in order (A and B read in parallel)."""
    tensors = stream_tensors([Load(ckpt, p.name, info) for p in pairs for ckpt, info in ((a, p.a), (b, p.b))],
                             device)
    for pair in pairs:
        ta, tb = next(tensors), next(tensors)
        yield LoadedPair(pair, ta.to(pair.compare_dtype), tb.to(pair.compare_dtype))
