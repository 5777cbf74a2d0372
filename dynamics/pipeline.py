"""Stream tensor pairs from two checkpoints to a device, one pair ahead of the kernel.

A reader thread loads pair i+1 while the caller's kernel works on pair i, so a diff runs at the
pace of the slowest stage (usually the disk) rather than the sum of the stages. On CUDA each side
(A and B) is read by its own worker, in STAGE_BYTES chunks, into a small ring of pinned host
buffers, and each chunk is copied to the device without blocking while the next one is read:
pinned memory stays at 2 × STAGE_SLOTS × STAGE_BYTES whatever the tensor sizes. Device memory
holds at most `depth` + 2 pairs.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from dynamics.checkpoints.base import Checkpoint, TensorInfo
from dynamics.errors import CheckpointError
from dynamics.pairing import TensorPair

STAGE_BYTES = 64 * 1024**2
STAGE_SLOTS = 3


@dataclass
class LoadedPair:
    """A pair on the target device, in its compare dtype, ready for the kernel."""

    pair: TensorPair
    a: torch.Tensor
    b: torch.Tensor
    copied: tuple[torch.cuda.Event, torch.cuda.Event] | None = None


class _Stager:
    """Moves one side's tensors to the GPU through a ring of pinned chunk buffers on its own stream."""

    def __init__(self, ckpt: Checkpoint, device: torch.device):
        self.ckpt, self.device = ckpt, device
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

    def load(self, name: str, info: TensorInfo) -> tuple[torch.Tensor, torch.cuda.Event]:
        """Device tensor of `name` in its stored dtype, and the event after its last copy."""
        with torch.cuda.stream(self.stream):
            flat = torch.empty(info.nbytes, dtype=torch.uint8, device=self.device)
        location = self.ckpt.locations.get(name)
        if location is None:
            host = self.ckpt.read(name).reshape(-1).view(torch.uint8)
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


def _adopt(item: LoadedPair) -> None:
    """Make the reader streams' copies visible to the current stream, then cast to compare dtype."""
    current = torch.cuda.current_stream(item.a.device)
    for t, event in zip((item.a, item.b), item.copied):
        current.wait_event(event)
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
        ta, tb = read_host(a, pair.name, pair.a), read_host(b, pair.name, pair.b)
        return LoadedPair(pair, ta.to(pair.compare_dtype), tb.to(pair.compare_dtype))

    def load_cuda(stagers: tuple[_Stager, _Stager], sides: ThreadPoolExecutor, pair: TensorPair) -> LoadedPair:
        futures = [sides.submit(s.load, pair.name, info) for s, info in zip(stagers, (pair.a, pair.b))]
        (ta, copied_a), (tb, copied_b) = (f.result() for f in futures)
        return LoadedPair(pair, ta, tb, copied=(copied_a, copied_b))

    def reader() -> None:
        try:
            if device.type == "cuda":
                stagers = (_Stager(a, device), _Stager(b, device))
                with ThreadPoolExecutor(max_workers=2, thread_name_prefix="dynamics-side") as sides:
                    for pair in pairs:
                        if stop.is_set():
                            return
                        ready.put(load_cuda(stagers, sides, pair))
            else:
                for pair in pairs:
                    if stop.is_set():
                        return
                    ready.put(load_cpu(pair))
            ready.put(done)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
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
