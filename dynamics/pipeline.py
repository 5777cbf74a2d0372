"""Stream tensor pairs from two checkpoints to a device, one pair ahead of the kernel.

A reader thread loads pair i+1 (disk → pinned host buffer → non-blocking copy on its own CUDA
stream) while the caller's kernel works on pair i, so a diff runs at the pace of the slowest
stage rather than their sum. Host memory holds at most `depth` + 1 pairs.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Iterator

import torch

from dynamics.checkpoints.base import Checkpoint
from dynamics.errors import CheckpointError
from dynamics.pairing import TensorPair


@dataclass
class LoadedPair:
    """A pair on the target device, in its compare dtype, ready for the kernel."""

    pair: TensorPair
    a: torch.Tensor
    b: torch.Tensor
    copied: torch.cuda.Event | None = None


def read_into(ckpt: Checkpoint, name: str, out: torch.Tensor) -> None:
    """Fill the flat uint8 host buffer `out` with the stored bytes of tensor `name`.

    Safetensors tensors are read straight from the file into `out` (one copy, no mmap faults);
    other formats go through `Checkpoint.read`.
    """
    location = ckpt.locations.get(name)
    if location is None:
        out.copy_(ckpt.read(name).reshape(-1).view(torch.uint8))
        return
    path, offset, nbytes = location
    view = memoryview(out.numpy())
    try:
        with open(path, "rb", buffering=0) as f:
            f.seek(offset)
            done = 0
            while done < nbytes:
                got = f.readinto(view[done:nbytes])
                if not got:
                    raise CheckpointError(f"{path}: tensor {name}: file ends before its data")
                done += got
    except OSError as e:
        raise CheckpointError(f"{path}: tensor {name}: {e.strerror or e}") from e


class _PinnedSlots:
    """A ring of reusable pinned host buffers; a slot is reused once its copy to the GPU is done."""

    def __init__(self, count: int, nbytes: int):
        self.buffers = [torch.empty(nbytes, dtype=torch.uint8, pin_memory=True) for _ in range(count)]
        self.events: list[torch.cuda.Event | None] = [None] * count
        self.next = 0

    def take(self) -> tuple[int, torch.Tensor]:
        index = self.next
        self.next = (self.next + 1) % len(self.buffers)
        if self.events[index] is not None:
            self.events[index].synchronize()
        return index, self.buffers[index]


def _to_device(buffer: torch.Tensor, info, device: torch.device) -> torch.Tensor:
    host = buffer[: info.nbytes].view(info.dtype).view(info.shape)
    return host.to(device, non_blocking=True)


def _adopt(item: LoadedPair) -> None:
    """Make the reader stream's copies visible to the current stream, then cast to compare dtype."""
    current = torch.cuda.current_stream(item.a.device)
    current.wait_event(item.copied)
    for t in (item.a, item.b):
        t.record_stream(current)
    item.a = item.a.to(item.pair.compare_dtype)
    item.b = item.b.to(item.pair.compare_dtype)


def stream_pairs(
    a: Checkpoint, b: Checkpoint, pairs: list[TensorPair], device: torch.device, depth: int = 2
) -> Iterator[LoadedPair]:
    """Yield every pair loaded on `device` in order; errors in the reader are re-raised here."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def load_cpu(pair: TensorPair) -> LoadedPair:
        ta, tb = a.read(pair.name), b.read(pair.name)
        return LoadedPair(pair, ta.to(pair.compare_dtype), tb.to(pair.compare_dtype))

    def reader() -> None:
        try:
            if device.type == "cuda":
                stream = torch.cuda.Stream(device)
                largest = max((max(p.a.nbytes, p.b.nbytes) for p in pairs), default=0)
                slots = _PinnedSlots(count=4, nbytes=max(largest, 1))
            for pair in pairs:
                if stop.is_set():
                    return
                if device.type != "cuda":
                    ready.put(load_cpu(pair))
                    continue
                loaded = []
                for ckpt, info in ((a, pair.a), (b, pair.b)):
                    index, buffer = slots.take()
                    read_into(ckpt, pair.name, buffer[: info.nbytes])
                    with torch.cuda.stream(stream):
                        tensor = _to_device(buffer, info, device)
                        event = torch.cuda.Event()
                        event.record(stream)
                    slots.events[index] = event
                    loaded.append(tensor)
                ready.put(LoadedPair(pair, *loaded, copied=event))
            ready.put(done)
        except BaseException as e:  # handed to the consumer, which re-raises it
            ready.put(e)

    thread = threading.Thread(target=reader, name="dynamics-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            if item.copied is not None:
                _adopt(item)
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                ready.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()
